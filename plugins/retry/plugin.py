"""The retry plugin: the ``proxy_next_attempt`` policy (retry, fall back or
stop), the per-request deadline, and feeding outcomes to the breakers."""

from __future__ import annotations

import math
import random

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

import proxy

from .breaker import CLOSED, Breaker, BreakerMetrics
from .hedge import HedgePolicy
from .settings import RetrySettings

__all__ = ["RETRY_STATUSES", "RetryPlugin"]

#: Upstream statuses retried on the same target (then the next target).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_RETRY_ERRORS = frozenset({"connect", "invalid_body"})
_TIMEOUTS = frozenset({"timeout", "stall"})
# "protocol" (a wrong kind of answer) and "cancelled" (a hedge race lost, a client gone)
# say nothing about the target's health.
_HEALTH_ERRORS = frozenset({"timeout", "stall", "connect", "invalid_body"})
#: An attempt with less time than this before the deadline is not worth starting.
_MIN_ATTEMPT_S = 0.01
#: Breakers of names only a catalogue pattern serves (client-chosen), at most.
_MAX_BREAKERS = 1024
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
    """Retry, fallback, circuit breakers, hedging and a per-request deadline.

    :param clock: the breakers' cooldowns and windows and the request deadline run on
        its ``monotonic()`` (the event loop's clock by default; tests pass a
        :class:`proxy.ManualClock`).
    """

    name = "retry"

    def __init__(self, clock: proxy.Clock | None = None) -> None:
        self.clock: proxy.Clock = clock if clock is not None else proxy.LoopClock()
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
        errors += [config.error(("plugins", self.name, "hedge", "models", i),
                                f"unknown model {model!r} (not in the catalogue)")
                   for i, model in enumerate(settings.hedge.models) if model not in config.models]
        if settings.max_backoff_s < settings.backoff_base_s:
            errors.append(config.error(("plugins", self.name, "max_backoff_s"),
                                       "must be at least backoff_base_s"))
        if errors:
            raise proxy.ConfigErrors(errors)
        self.settings = settings
        self.config = config
        self.rng = random.Random(settings.seed)
        self._metrics = _Metrics(registry)
        self.hedging = HedgePolicy(settings.hedge, registry, self._entry)
        self._max_retries = {m: o.max_retries for m, o in settings.models.items()
                             if o.max_retries is not None}
        self._retry_on_timeout = {m: o.retry_on_timeout for m, o in settings.models.items()
                                  if o.retry_on_timeout is not None}
        # The deadline caps an attempt's timeouts only when it is shorter than them:
        # skipping Attempt.timeout otherwise spares the core a per-attempt copy.
        # Keyed by catalogue entry: a pattern's timeouts apply to every name it serves.
        self._timeouts: dict[str | None, tuple[float, float]] = {}
        self._breaker_on = settings.breaker.enabled
        self.breakers = {}
        if self._breaker_on:
            for model in config.models:
                if not any(c in model for c in "*?["):
                    self._breaker(model)

    @proxy.hookimpl
    def proxy_startup(self, app: web.Application) -> None:
        """``hedge.routes`` are checked once every plugin has declared its route names."""
        config = self.config
        known = set(config.models) | set(config.route_names)
        errors = [config.error(("plugins", self.name, "hedge", "routes", i),
                               f"unknown route {route!r} (known: {', '.join(sorted(known))})")
                  for i, route in enumerate(self.settings.hedge.routes) if route not in known]
        if errors:
            raise proxy.ConfigErrors(errors)

    def _breaker(self, model: str) -> Breaker:
        """``model``'s breaker: one per concrete model (a failing ``gpt-5`` does not stop
        ``gpt-4o`` when one pattern serves both). Names only a pattern serves are
        client-chosen, so their breakers are bounded: closed, healthy ones are dropped first."""
        breaker = self.breakers.get(model)
        if breaker is None:
            exact = model in self.config.models
            if not exact and len(self.breakers) >= _MAX_BREAKERS:
                self._drop_idle_breakers()
            label = model if exact else self.config.catalogue_name(model)
            breaker = self.breakers[model] = Breaker(model, self.settings.breaker, self._metrics.breaker, label)
        return breaker

    def _entry(self, model: str) -> str | None:
        """The catalogue entry serving ``model`` (per-model settings are keyed by it)."""
        return model if model in self.config.models else self.config.catalogue_name(model)

    def _label(self, model: str) -> str:
        """A bounded metric label: the model, or the pattern serving it."""
        return self._entry(model) or model

    def _drop_idle_breakers(self) -> None:
        for name in [n for n, b in self.breakers.items()
                     if n not in self.config.models and b.state == CLOSED and not b.consecutive
                     and not b.probing][: _MAX_BREAKERS // 4]:
            del self.breakers[name]

    # -- attempts -----------------------------------------------------------
    @proxy.hookimpl
    def proxy_next_attempt(self, ctx: proxy.RequestContext) -> proxy.Attempt | proxy.Stop | None:
        route = ctx.route
        if route is None or not route.targets:
            return None
        now = self.clock.monotonic()
        st: _RequestState | None = ctx.state.get(_STATE_KEY)
        if st is None:
            st = ctx.state[_STATE_KEY] = _RequestState(now + self.settings.deadline_s)
            if self.hedging.enabled and self.hedging.opted_in(ctx, route.targets[0]):
                self.hedging.earn(route.targets[0].model)
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
        # A wrong kind of answer is deterministic: only another upstream may answer right.
        avoid = last.target.upstream if action == "elsewhere" else None
        return self._next_target(ctx, st, st.index + 1, remaining, avoid)

    def _classify(self, record: proxy.AttemptRecord) -> str:
        """``"retry"`` (same target), ``"fallback"`` (next target), ``"elsewhere"`` (next
        target on another upstream) or ``"stop"``."""
        error = record.error
        if error == "http":
            status = record.status or 0
            if status in RETRY_STATUSES:
                return "retry"
            return "stop" if 400 <= status < 500 else "fallback"
        if error in _RETRY_ERRORS:
            return "retry"
        if error == "protocol":
            return "elsewhere"
        if error in _TIMEOUTS:
            model = record.target.model
            return "retry" if self._retry_on_timeout.get(self._label(model), self.settings.retry_on_timeout) \
                else "fallback"
        return "stop" if error is None else "fallback"  # None: a success, nothing to add

    def _retry(self, ctx: proxy.RequestContext, st: _RequestState, last: proxy.AttemptRecord,
               remaining: float) -> proxy.Attempt | None:
        """Another try of the current target, or ``None`` to fall back."""
        target = last.target
        model = target.model
        if st.tries > self._max_retries.get(self._label(model), self.settings.max_retries):
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
        self._metrics.retries(self._label(model), reason).inc()
        return self._attempt(ctx, st, target, delay, remaining - delay)

    def _next_target(self, ctx: proxy.RequestContext, st: _RequestState, start: int,
                     remaining: float, avoid_upstream: str | None = None) -> proxy.Attempt | proxy.Stop:
        targets = ctx.route.targets  # type: ignore[union-attr]
        for i in range(start, len(targets)):
            target = targets[i]
            if target.upstream == avoid_upstream:
                continue
            if self._breaker_on and not self._take(st, target.model, len(ctx.attempts)):
                continue
            st.index, st.tries = i, 1
            previous = ctx.attempts[-1].target.model if ctx.attempts else targets[0].model
            if target.model != previous:
                self._metrics.fallbacks(self._label(previous), self._label(target.model)).inc()
                ctx.response_headers["x-floodgate-fallback"] = f"{targets[0].model}->{target.model}"
            return self._attempt(ctx, st, target, 0.0, remaining)
        if ctx.attempts:
            return proxy.STOP  # the client gets the last failure
        now = self.clock.monotonic()
        wait = min((self._breaker(t.model).retry_in(now) for t in targets), default=1.0)
        raise proxy.Rejection(503, "all upstream targets are unavailable (circuit open)",
                              code="upstream_unavailable", type="server_error",
                              headers={"retry-after": str(max(1, math.ceil(wait)))})

    def _take(self, st: _RequestState, model: str, index: int) -> bool:
        """Ask ``model``'s breaker for the next attempt (index ``index``)."""
        allowed, probe = self._breaker(model).allow(self.clock.monotonic())
        if probe:
            st.probe = (self.breakers[model], index)
        return allowed

    def _attempt(self, ctx: proxy.RequestContext, st: _RequestState, target: proxy.Target,
                 delay: float, remaining: float) -> proxy.Attempt:
        entry = self._entry(target.model)
        timeouts = self._timeouts.get(entry)
        if timeouts is None:  # resolved once per catalogue entry (None: outside the catalogue)
            t = ctx.config.timeouts(target)
            timeouts = self._timeouts[entry] = (t.first_byte, max(t.first_byte, t.total))
        hedge_after = None
        if self.hedging.enabled and self.hedging.opted_in(ctx, target):
            hedge_after = self.hedging.after(target.model, ctx.stream)
            if hedge_after is not None and hedge_after >= remaining - delay:
                hedge_after = None  # the deadline comes first: nothing to gain
        if remaining >= timeouts[1]:
            return proxy.Attempt(target, delay, hedge_after=hedge_after)
        if remaining < 0.5 * min(timeouts[0], self.settings.deadline_s):
            # Left with less than half the time a fresh request gets: if this try
            # times out, the deadline is to blame, not the target.
            if st.capped is None:
                st.capped = set()
            st.capped.add(len(ctx.attempts))
        return proxy.Attempt(target, delay, timeout=remaining, hedge_after=hedge_after)

    # -- hedging --------------------------------------------------------------
    @proxy.hookimpl
    def proxy_hedge(self, ctx: proxy.RequestContext, attempt: proxy.AttemptRecord) -> proxy.Attempt | None:
        """Race the slow ``attempt``: the route's next target (``hedge.to: next``, when its
        breaker lets it) or the same model again, within the budget and the deadline."""
        st: _RequestState | None = ctx.state.get(_STATE_KEY)
        route = ctx.route
        if st is None or route is None:
            return None
        remaining = st.deadline - self.clock.monotonic()
        if remaining < _MIN_ATTEMPT_S:
            return None
        model = attempt.target.model
        targets = route.targets
        index = len(ctx.attempts)
        chosen: tuple[int, proxy.Target] | None = None
        if self.settings.hedge.to == "next":
            for i in range(st.index + 1, len(targets)):
                if not self._breaker_on or self._take(st, targets[i].model, index):
                    chosen = (i, targets[i])
                    break
        if chosen is None and (not self._breaker_on or self._take(st, model, index)):
            chosen = (st.index, attempt.target)
        if chosen is None:
            self.hedging.skipped(model, "no_target").inc()
            return None
        if not self.hedging.spend(model):
            self._release_unused(st, index)
            return None
        i, target = chosen
        if i == st.index:
            st.tries += 1
        else:
            st.index, st.tries = i, 1
        return self._attempt(ctx, st, target, 0.0, remaining)

    @staticmethod
    def _release_unused(st: _RequestState, index: int) -> None:
        if st.probe is not None and st.probe[1] == index:
            st.probe[0].release()
            st.probe = None

    # -- breaker bookkeeping ------------------------------------------------
    def _record(self, ctx: proxy.RequestContext, st: _RequestState) -> None:
        """Feed the outcomes of attempts the breakers have not seen yet."""
        now = self.clock.monotonic()
        attempts = ctx.attempts
        for i in range(st.recorded, len(attempts)):
            record = attempts[i]
            # The probe slot belongs to the attempt made at that index on that model (a
            # hedge the core did not start after all leaves the index to another target).
            probe = st.probe is not None and st.probe[1] == i and st.probe[0].model == record.target.model
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
        if st is None:
            return
        if self.hedging.enabled:
            self.hedging.observe(ctx)
        if not self._breaker_on:
            return
        if st.recorded < len(ctx.attempts):
            self._record(ctx, st)
        if st.probe is not None:  # took the slot but never made the attempt
            st.probe[0].release()
            st.probe = None
