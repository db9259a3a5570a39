"""The retry plugin: the ``proxy_next_attempt`` policy (retry, fall back or
stop), the per-request deadline, and feeding outcomes to the breakers."""

from __future__ import annotations

import math
import random
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

import proxy

from .breaker import Breaker, BreakerMetrics
from .fleet import FleetBreakers, kept_breakers
from .health import Health, RequestState
from .hedge import HedgePolicy
from .settings import RetrySettings

__all__ = ["RETRY_STATUSES", "RetryPlugin"]

#: Upstream statuses retried on the same target (then the next target).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_RETRY_ERRORS = frozenset({"connect", "invalid_body"})
_TIMEOUTS = frozenset({"timeout", "stall"})
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
        self.failovers = proxy.LabelCache(Counter(
            "floodgate_retry_deployment_failovers", "Moves to another deployment of the same model",
            ["model", "from_deployment", "to_deployment"], registry=registry))
        self.breaker = BreakerMetrics(registry)


class RetryPlugin:
    """Retry, fallback, circuit breakers, hedging and a per-request deadline.

    :param clock: the breakers' cooldowns and windows and the request deadline run on
        its ``monotonic()`` (the event loop's clock by default; tests pass a
        :class:`proxy.ManualClock`).
    """

    name = "retry"
    settings_model = RetrySettings

    def __init__(self, clock: proxy.Clock | None = None) -> None:
        self.clock: proxy.Clock = clock if clock is not None else proxy.LoopClock()
        self.settings = RetrySettings()
        self.rng = random.Random()
        self.health: Health | None = None
        self.hooks: proxy.Hooks | None = None
        self._acquired = False
        self._state = proxy.SharedState()
        self._shared_breakers = False
        self._fleet: FleetBreakers | None = None  # the breakers kept by the state (shared with Redis state)

    # -- configuration ------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry, state: proxy.SharedState) -> None:
        settings = config.plugin_settings(self.name, self.settings_model)
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
        self._state = state
        self._shared_breakers = settings.breaker.enabled and state.backend == "redis"
        self._fleet = fleet = kept_breakers(state)  # a reload keeps every breaker's state
        fleet.configure(settings.breaker, settings.deadline_s, self.clock)
        self.health = Health(config, settings.breaker, self._metrics.breaker, self.clock, fleet) \
            if settings.breaker.enabled else None

    @property
    def breakers(self) -> dict[str, Breaker]:
        """Every place's breaker by its qualified name (``model`` or ``model@deployment``)."""
        return self.health.breakers if self.health is not None else {}

    @proxy.hookimpl
    def proxy_startup(self, app: web.Application) -> None:
        """``hedge.routes`` are checked once every plugin has declared its route names; with Redis
        state, this configuration follows the fleet's breakers."""
        self.hooks = app[proxy.HOOKS]
        if self._fleet is not None and not self._acquired:
            self._acquired = True
            self._fleet.acquire()
        config = self.config
        known = set(config.models) | set(config.route_names)
        errors = [config.error(("plugins", self.name, "hedge", "routes", i),
                               f"unknown route {route!r} (known: {', '.join(sorted(known))})")
                  for i, route in enumerate(self.settings.hedge.routes) if route not in known]
        if errors:
            raise proxy.ConfigErrors(errors)

    @proxy.hookimpl
    async def proxy_shutdown(self) -> None:
        if self._fleet is not None and self._acquired:
            self._acquired = False
            await self._fleet.release_user()

    def _entry(self, model: str) -> str | None:
        """The catalogue entry serving ``model`` (per-model settings are keyed by it)."""
        return model if model in self.config.models else self.config.catalogue_name(model)

    def _label(self, model: str) -> str:
        """A bounded metric label: the model, or the pattern serving it."""
        return self._entry(model) or model

    # -- attempts -----------------------------------------------------------
    @proxy.hookimpl
    def proxy_next_attempt(self, ctx: proxy.RequestContext) -> proxy.Attempt | proxy.Stop | None:
        route = ctx.route
        if route is None or not route.targets:
            return None
        now = self.clock.monotonic()
        st: RequestState | None = ctx.state.get(_STATE_KEY)
        if st is None:
            if self._shared_breakers and not self._state.shared:
                self._state.fallback()  # Redis state unreachable under on_error: reject: 503
            st = ctx.state[_STATE_KEY] = RequestState(now + self.settings.deadline_s)
            if self.hedging.enabled and self.hedging.opted_in(ctx, route.targets[0]):
                self.hedging.earn(route.targets[0].model)
        attempts = ctx.attempts
        if self.health is not None and st.recorded < len(attempts):
            self.health.record(ctx, st)
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
            # Another deployment of the same model first, at once; then this one again after a backoff.
            attempt = self._failover(ctx, st, last, remaining) or self._retry(ctx, st, last, remaining)
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

    def _failover(self, ctx: proxy.RequestContext, st: RequestState, last: proxy.AttemptRecord,
                  remaining: float) -> proxy.Attempt | None:
        """The next deployment of ``last``'s model that this request has not tried, if its breaker
        lets it: a deployment's 429 or failure says nothing about the model's other deployments."""
        failed = last.target
        if failed.deployment is None:
            return None
        tried = {a.target.qualified for a in ctx.attempts}
        targets = ctx.route.targets  # type: ignore[union-attr]
        for i, target in enumerate(targets):
            if target.model != failed.model or target.qualified in tried or self._passed_over(ctx, target):
                continue
            if self.health is not None and not self.health.take(st, target, len(ctx.attempts)):
                continue
            st.index, st.tries = i, 1
            self._metrics.failovers(self._label(failed.model), failed.deployment, target.deployment or "-").inc()
            return self._attempt(ctx, st, target, 0.0, remaining)
        return None

    def _retry(self, ctx: proxy.RequestContext, st: RequestState, last: proxy.AttemptRecord,
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
        if self.health is not None and not self.health.take(st, target, len(ctx.attempts)):
            return None
        st.tries += 1
        assert last.error is not None  # only failures are retried
        reason = last.error if last.error != "http" else str(last.status)
        self._metrics.retries(self._label(model), reason).inc()
        return self._attempt(ctx, st, target, delay, remaining - delay)

    def _next_target(self, ctx: proxy.RequestContext, st: RequestState, start: int,
                     remaining: float, avoid_upstream: str | None = None) -> proxy.Attempt | proxy.Stop:
        targets = ctx.route.targets  # type: ignore[union-attr]
        for i in range(start, len(targets)):
            target = targets[i]
            if target.upstream == avoid_upstream or (ctx.attempts and self._passed_over(ctx, target)):
                continue
            if self.health is not None and not self.health.take(st, target, len(ctx.attempts)):
                continue
            st.index, st.tries = i, 1
            previous = ctx.attempts[-1].target.model if ctx.attempts else targets[0].model
            if target.model != previous:
                self._metrics.fallbacks(self._label(previous), self._label(target.model)).inc()
                ctx.response_headers["x-floodgate-fallback"] = f"{targets[0].model}->{target.model}"
            return self._attempt(ctx, st, target, 0.0, remaining)
        if ctx.attempts:
            return proxy.STOP  # the client gets the last failure
        wait = self.health.retry_in(targets) if self.health is not None else 1.0
        raise proxy.Rejection(503, "all upstream targets are unavailable (circuit open)",
                              code="upstream_unavailable", type="server_error",
                              headers={"retry-after": str(max(1, math.ceil(wait)))})

    def _attempt(self, ctx: proxy.RequestContext, st: RequestState, target: proxy.Target,
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
        st: RequestState | None = ctx.state.get(_STATE_KEY)
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
        health = self.health
        if self.settings.hedge.to == "next":
            for i in range(st.index + 1, len(targets)):
                if self._passed_over(ctx, targets[i]):
                    continue
                if health is None or health.take(st, targets[i], index):
                    chosen = (i, targets[i])
                    break
        if chosen is None and (health is None or health.take(st, attempt.target, index)):
            chosen = (st.index, attempt.target)
        if chosen is None:
            self.hedging.skipped(model, "no_target").inc()
            return None
        if not self.hedging.spend(model):
            st.release_unused(index)
            return None
        i, target = chosen
        if i == st.index:
            st.tries += 1
        else:
            st.index, st.tries = i, 1
        return self._attempt(ctx, st, target, 0.0, remaining)

    # -- health -------------------------------------------------------------
    @proxy.hookimpl
    def proxy_unavailable(self, ctx: proxy.RequestContext, target: proxy.Target) -> str | None:
        """A place whose breaker is open (or half-open with its probe out): the rate limiter
        then places requests on the model's other deployments."""
        return self.health.unavailable(target) if self.health is not None else None

    def _passed_over(self, ctx: proxy.RequestContext, target: proxy.Target) -> bool:
        """Another plugin says ``target`` has no room for the request now (a full or throttled
        deployment): failing over there would only add load where it is refused."""
        return target.deployment is not None and self.hooks is not None and self.hooks.unavailable(ctx, target) \
            is not None

    @proxy.hookimpl
    def proxy_status(self) -> dict[str, Any] | None:
        return {"deployments": self.health.status()} if self.health is not None else None

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        st: RequestState | None = ctx.state.get(_STATE_KEY)
        if st is None:
            return
        if self.hedging.enabled:
            self.hedging.observe(ctx)
        if self.health is not None:
            self.health.finish(ctx, st)
