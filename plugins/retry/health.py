"""The targets' health: one circuit breaker per concrete place a request can go, and the
per-request bookkeeping that feeds them.

A place is a model, or one deployment of a model (``deepseek-v3.2@key-a``: its
:attr:`proxy.Target.qualified` name): a deployment's failures open its own breaker
only, so the model's other deployments keep serving. Breakers of names only a
catalogue pattern serves are client-chosen, so they are bounded; their transitions
are counted under the pattern.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import proxy

from .breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerMetrics
from .settings import BreakerSettings

if TYPE_CHECKING:
    from .fleet import FleetBreakers

__all__ = ["MAX_BREAKERS", "Health", "RequestState"]

#: Breakers of names only a catalogue pattern serves (client-chosen), at most.
MAX_BREAKERS = 1024
# "protocol" (a wrong kind of answer) and "cancelled" (a hedge race lost, a client gone)
# say nothing about the target's health.
_HEALTH_ERRORS = frozenset({"timeout", "stall", "connect", "invalid_body"})


class RequestState:
    """Per-request bookkeeping of the retry plugin, in ``ctx.state["retry.state"]``."""

    __slots__ = ("deadline", "index", "tries", "recorded", "probe", "capped")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.index = 0  # position in route.targets of the current target
        self.tries = 0  # tries on the current target
        self.recorded = 0  # ctx.attempts whose outcome the breakers have seen
        self.probe: tuple[Breaker, int] | None = None  # half-open slot held, attempt index
        self.capped: set[int] | None = None  # attempts whose timeout the deadline shortened

    def release_unused(self, index: int) -> None:
        """The probe slot taken for attempt ``index`` is not used after all."""
        if self.probe is not None and self.probe[1] == index:
            self.probe[0].release()
            self.probe = None


class Health:
    """Every place's breaker, made on first use (exact catalogue entries at start-up)."""

    def __init__(self, config: proxy.Config, settings: BreakerSettings, metrics: BreakerMetrics,
                 clock: proxy.Clock, fleet: FleetBreakers | None = None) -> None:
        """:param fleet: where breakers live across reloads (and, with Redis state, how they mirror
            the fleet's); without it, plain local breakers of this configuration only."""
        self.config = config
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.fleet = fleet
        self.breakers: dict[str, Breaker] = fleet.breakers if fleet is not None else {}
        for key, breaker in self.breakers.items():  # kept across a reload: this configuration's settings
            breaker.reconfigure(settings, metrics, self._label(key, breaker))
        patterns = set(config.patterns)
        for model in config.models:
            if model not in patterns:
                for target in config.deployments(model):
                    self.get(target)

    def get(self, target: proxy.Target) -> Breaker:
        """``target``'s breaker (its model's, or its deployment's)."""
        key = target.qualified
        breaker = self.breakers.get(key)
        if breaker is None:
            exact = target.model in self.config.models
            if not exact and len(self.breakers) >= MAX_BREAKERS:
                self._drop_idle()
            if exact:
                label = key
            else:  # counted under the pattern serving it
                entry = self.config.catalogue_name(target.model) or target.model
                label = entry if target.deployment is None else f"{entry}@{target.deployment}"
            make = self.fleet.make if self.fleet is not None else Breaker
            breaker = self.breakers[key] = make(key, self.settings, self.metrics, label)
        return breaker

    def _label(self, key: str, breaker: Breaker) -> str | None:
        """The metric label of a kept breaker under this configuration's catalogue."""
        model, _, deployment = key.partition("@")
        if model in self.config.models:
            return key
        entry = self.config.catalogue_name(model)
        if entry is None:
            return breaker.label
        return entry if not deployment else f"{entry}@{deployment}"

    def _drop_idle(self) -> None:
        idle = [key for key, b in self.breakers.items()
                if b.label != key and b.state == CLOSED and not b.consecutive and not b.probing]
        for key in idle[: MAX_BREAKERS // 4]:
            del self.breakers[key]

    def unavailable(self, target: proxy.Target) -> str | None:
        """Why ``target`` would be skipped now (read-only: no probe slot is taken)."""
        breaker = self.breakers.get(target.qualified)
        if breaker is None or breaker.state == CLOSED:
            return None
        if breaker.state == OPEN and self.clock.monotonic() < breaker.open_until:
            return "circuit open"
        return "circuit half-open, probing" if breaker.state == HALF_OPEN and breaker.probing else None

    def take(self, st: RequestState, target: proxy.Target, index: int) -> bool:
        """Ask ``target``'s breaker for the next attempt (index ``index`` of ``ctx.attempts``)."""
        breaker = self.get(target)
        allowed, probe = breaker.allow(self.clock.monotonic())
        if probe:
            st.probe = (breaker, index)
        return allowed

    def retry_in(self, targets: tuple[proxy.Target, ...]) -> float:
        """Seconds until the first of ``targets`` may be tried again."""
        now = self.clock.monotonic()
        return min((self.get(t).retry_in(now) for t in targets), default=1.0)

    def record(self, ctx: proxy.RequestContext, st: RequestState) -> None:
        """Feed the outcomes of attempts the breakers have not seen yet."""
        now = self.clock.monotonic()
        attempts = ctx.attempts
        for i in range(st.recorded, len(attempts)):
            record = attempts[i]
            # The probe slot belongs to the attempt made at that index on that place (a hedge
            # the core did not start after all leaves the index to another target).
            probe = st.probe is not None and st.probe[1] == i and st.probe[0].model == record.target.qualified
            failed = self.failed(record, st, i)
            if probe:
                breaker = st.probe[0]  # type: ignore[index]
                st.probe = None
                if failed is None:
                    breaker.release()
                else:
                    breaker.record(failed, now, probe=True)
            elif failed is not None:
                self.get(record.target).record(failed, now, probe=False)
        st.recorded = len(attempts)

    def failed(self, record: proxy.AttemptRecord, st: RequestState, index: int) -> bool | None:
        """Whether an outcome counts against the place's health; ``None``: says nothing."""
        error = record.error
        if error is None:
            return None if record.status is None else False  # no status: cancelled early
        if error == "http":
            status = record.status or 0
            # A deployment's 429s are the rate limiter's to follow (retry-after, learned limits, adaptive
            # concurrency): they say it is full, not broken.
            return status >= 500 or (status == 429 and self.settings.trip_on_429 and record.target.deployment is None)
        if error == "timeout" and st.capped is not None and index in st.capped:
            return None  # cut short by the deadline, not by the target's own timeout
        return True if error in _HEALTH_ERRORS else None

    def finish(self, ctx: proxy.RequestContext, st: RequestState) -> None:
        """The request is over: record what is left, give back an unused probe slot."""
        if st.recorded < len(ctx.attempts):
            self.record(ctx, st)
        if st.probe is not None:  # took the slot but never made the attempt
            st.probe[0].release()
            st.probe = None

    def status(self) -> dict[str, dict[str, str]]:
        """Each place's breaker state, for ``/-/status``."""
        names = ("closed", "half_open", "open")
        now = self.clock.monotonic()
        out = {}
        for key, breaker in self.breakers.items():
            state = breaker.state
            if state == OPEN and now >= breaker.open_until:
                state = HALF_OPEN  # the next request probes it
            out[key] = {"breaker": names[state]}
        return out
