"""The retry plugin: the ``proxy_next_attempt`` policy (retry, fall back or
stop), the per-request deadline, and feeding outcomes to the breakers."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

import proxy

from .breaker import Breaker, BreakerMetrics
from .settings import RetrySettings

__all__ = ["RETRY_STATUSES", "RetryPlugin"]

#: Upstream statuses retried on the same target (then the next target).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_RETRY_ERRORS = frozenset({"connect", "invalid_body"})
_HEALTH_ERRORS = frozenset({"timeout", "connect", "invalid_body"})
#: An attempt with less time than this before the deadline is not worth starting.
_MIN_ATTEMPT_S = 0.01
_STATE_KEY = "retry.state"


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.retries = proxy.LabelCache(Counter(
            "floodgate_retry_retries", "Retries of the same target, by model and reason "
            "(upstream status, timeout, connect or invalid_body)",
            ["model", "reason"], registry=registry))
        self.fallbacks = proxy.LabelCache(Counter(
            "floodgate_retry_fallbacks", "Moves to another target of the route",
            ["from_model", "to_model"], registry=registry))
        self.breaker = BreakerMetrics(registry)


class _RequestState:
    """Per-request bookkeeping, in ``ctx.state["retry.state"]``."""

    __slots__ = ("deadline", "index", "tries", "recorded", "probe", "capped")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.index = 0  # position in route.targets of the current target
        self.tries = 0  # tries on the current target
        self.recorded = 0  # ctx.attempts whose outcome the breakers have seen
        self.probe: tuple[Breaker, int] | None = None  # half-open slot held, attempt index
        self.capped: set[int] | None = None  # attempts whose timeout the deadline shortened


class RetryPlugin:
    """Retry, fallback, circuit breakers and a per-request deadline.

    :param clock: monotonic seconds for the circuit breakers (tests inject one to
        skip a cooldown). The deadline always runs on :func:`time.monotonic`,
        since it bounds real waits.
    """

    name = "retry"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.settings = RetrySettings()
        self.rng = random.Random()
        self.breakers: dict[str, Breaker] = {}

    # -- configuration ------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        settings = config.plugin_settings(self.name, RetrySettings)
        errors = [config.error(("plugins", self.name, "models", model),
                               f"unknown model {model!r} (not in the catalogue)")
                  for model in settings.models if model not in config.models]
        if settings.max_backoff_s < settings.backoff_base_s:
            errors.append(config.error(("plugins", self.name, "max_backoff_s"),
                                       "must be at least backoff_base_s"))
        if errors:
            raise proxy.ConfigErrors(errors)
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self._metrics = _Metrics(registry)
        self._max_retries = {m: o.max_retries for m, o in settings.models.items()
                             if o.max_retries is not None}
        self._retry_on_timeout = {m: o.retry_on_timeout for m, o in settings.models.items()
                                  if o.retry_on_timeout is not None}
        # The deadline caps an attempt's timeouts only when it is shorter than them:
        # skipping Attempt.timeout otherwise spares the core a per-attempt copy.
        self._timeouts: dict[str, tuple[float, float]] = {}
        for model in config.models:
            t = config.timeouts(config.target(model))
            self._timeouts[model] = (t.first_byte, max(t.first_byte, t.total))
        self._breaker_on = settings.breaker.enabled
        self.breakers = {}
        if self._breaker_on:
            for model in config.models:
                self._breaker(model)

    def _breaker(self, model: str) -> Breaker:
        breaker = self.breakers.get(model)
        if breaker is None:
            breaker = self.breakers[model] = Breaker(model, self.settings.breaker, self._metrics.breaker)
        return breaker

    # -- attempts -----------------------------------------------------------
    @proxy.hookimpl
    def proxy_next_attempt(self, ctx: proxy.RequestContext) -> proxy.Attempt | proxy.Stop | None:
        route = ctx.route
        if route is None or not route.targets:
            return None
        now = time.monotonic()
        st: _RequestState | None = ctx.state.get(_STATE_KEY)
        if st is None:
            st = ctx.state[_STATE_KEY] = _RequestState(now + self.settings.deadline_s)
        attempts = ctx.attempts
        if self._breaker_on and st.recorded < len(attempts):
            self._record(ctx, st)
        remaining = st.deadline - now
        if not attempts:
            return self._next_target(ctx, st, 0, remaining)
        if remaining < _MIN_ATTEMPT_S:
            return proxy.STOP
        last = attempts[-1]
        action = self._classify(last)
        if action == "stop":
            return proxy.STOP
        if action == "retry":
            attempt = self._retry(ctx, st, last, remaining)
            if attempt is not None:
                return attempt
        return self._next_target(ctx, st, st.index + 1, remaining)

    def _classify(self, record: proxy.AttemptRecord) -> str:
        """``"retry"`` (same target), ``"fallback"`` (next target) or ``"stop"``."""
        error = record.error
        if error == "http":
            status = record.status or 0
            if status in RETRY_STATUSES:
                return "retry"
            return "stop" if 400 <= status < 500 else "fallback"
        if error in _RETRY_ERRORS:
            return "retry"
        if error == "timeout":
            model = record.target.model
            return "retry" if self._retry_on_timeout.get(model, self.settings.retry_on_timeout) \
                else "fallback"
        return "stop" if error is None else "fallback"  # None: a success, nothing to add

    def _retry(self, ctx: proxy.RequestContext, st: _RequestState, last: proxy.AttemptRecord,
               remaining: float) -> proxy.Attempt | None:
        """Another try of the current target, or ``None`` to fall back."""
        target = last.target
        model = target.model
        if st.tries > self._max_retries.get(model, self.settings.max_retries):
            return None
        settings = self.settings
        cap = min(settings.max_backoff_s, settings.backoff_base_s * 2 ** (st.tries - 1))
        delay = self.rng.uniform(0.0, cap) if cap > 0 else 0.0
        if last.retry_after is not None:
            if last.retry_after > settings.max_retry_after_s:
                return None
            delay = max(delay, last.retry_after)
        if remaining - delay < _MIN_ATTEMPT_S:
            return None  # never wait past the deadline; another target needs no wait
        if self._breaker_on and not self._take(st, model, len(ctx.attempts)):
            return None
        st.tries += 1
        assert last.error is not None  # only failures are retried
        reason = last.error if last.error != "http" else str(last.status)
        self._metrics.retries(model, reason).inc()
        return self._attempt(ctx, st, target, delay, remaining - delay)

    def _next_target(self, ctx: proxy.RequestContext, st: _RequestState, start: int,
                     remaining: float) -> proxy.Attempt | proxy.Stop:
        targets = ctx.route.targets  # type: ignore[union-attr]
        for i in range(start, len(targets)):
            target = targets[i]
            if self._breaker_on and not self._take(st, target.model, len(ctx.attempts)):
                continue
            st.index, st.tries = i, 1
            previous = ctx.attempts[-1].target.model if ctx.attempts else targets[0].model
            if target.model != previous:
                self._metrics.fallbacks(previous, target.model).inc()
                ctx.response_headers["x-floodgate-fallback"] = f"{targets[0].model}->{target.model}"
            return self._attempt(ctx, st, target, 0.0, remaining)
        if ctx.attempts:
            return proxy.STOP  # the client gets the last failure
        now = self.clock()
        wait = min((self._breaker(t.model).retry_in(now) for t in targets), default=1.0)
        raise proxy.Rejection(503, "all upstream targets are unavailable (circuit open)",
                              code="upstream_unavailable", type="server_error",
                              headers={"retry-after": str(max(1, math.ceil(wait)))})

    def _take(self, st: _RequestState, model: str, index: int) -> bool:
        """Ask ``model``'s breaker for the next attempt (index ``index``)."""
        allowed, probe = self._breaker(model).allow(self.clock())
        if probe:
            st.probe = (self.breakers[model], index)
        return allowed

    def _attempt(self, ctx: proxy.RequestContext, st: _RequestState, target: proxy.Target,
                 delay: float, remaining: float) -> proxy.Attempt:
        timeouts = self._timeouts.get(target.model)
        if timeouts is None:  # a target outside the catalogue: the upstream's timeouts
            t = ctx.config.timeouts(target)
            timeouts = self._timeouts[target.model] = (t.first_byte, max(t.first_byte, t.total))
        if remaining >= timeouts[1]:
            return proxy.Attempt(target, delay)
        if remaining < 0.5 * min(timeouts[0], self.settings.deadline_s):
            # Left with less than half the time a fresh request gets: if this try
            # times out, the deadline is to blame, not the target.
            if st.capped is None:
                st.capped = set()
            st.capped.add(len(ctx.attempts))
        return proxy.Attempt(target, delay, timeout=remaining)

    # -- breaker bookkeeping ------------------------------------------------
    def _record(self, ctx: proxy.RequestContext, st: _RequestState) -> None:
        """Feed the outcomes of attempts the breakers have not seen yet."""
        now = self.clock()
        attempts = ctx.attempts
        for i in range(st.recorded, len(attempts)):
            record = attempts[i]
            probe = st.probe is not None and st.probe[1] == i
            failed = self._failed(record, st, i)
            if probe:
                breaker = st.probe[0]  # type: ignore[index]
                st.probe = None
                if failed is None:
                    breaker.release()
                else:
                    breaker.record(failed, now, probe=True)
            elif failed is not None:
                self._breaker(record.target.model).record(failed, now, probe=False)
        st.recorded = len(attempts)

    def _failed(self, record: proxy.AttemptRecord, st: _RequestState, index: int) -> bool | None:
        """Whether an outcome counts against the target's health; ``None``: says nothing."""
        error = record.error
        if error is None:
            return None if record.status is None else False  # no status: cancelled early
        if error == "http":
            status = record.status or 0
            return status >= 500 or (status == 429 and self.settings.breaker.trip_on_429)
        if error == "timeout" and st.capped is not None and index in st.capped:
            return None  # cut short by the deadline, not by the target's own timeout
        return True if error in _HEALTH_ERRORS else None

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        st: _RequestState | None = ctx.state.get(_STATE_KEY)
        if st is None or not self._breaker_on:
            return
        if st.recorded < len(ctx.attempts):
            self._record(ctx, st)
        if st.probe is not None:  # took the slot but never made the attempt
            st.probe[0].release()
            st.probe = None
