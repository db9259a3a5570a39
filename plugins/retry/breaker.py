"""The circuit breaker of one target (catalogue model).

It opens after ``failures`` consecutive failures, or when the failure ratio over
a rolling window reaches ``failure_ratio`` (with at least ``min_requests``
outcomes in the window). While open the target is skipped; the first request
after ``cooldown_s`` half-opens it and is its one probe (concurrent requests
keep skipping it); the probe's success closes it, its failure re-opens it for
another cooldown.
"""

from __future__ import annotations

import logging
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge

import proxy

from .settings import BreakerSettings

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Breaker", "BreakerMetrics"]

log = logging.getLogger("floodgate.retry")

# Breaker states, also the value of the floodgate_retry_breaker_state gauge.
CLOSED, HALF_OPEN, OPEN = 0, 1, 2
_STATE_NAMES = ("closed", "half_open", "open")


class BreakerMetrics:
    """The breakers' series: one per model in each."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = proxy.LabelCache(Gauge(
            "floodgate_retry_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["model"], registry=registry, multiprocess_mode="livemax"))  # the worst any worker sees
        self.transitions = proxy.LabelCache(Counter(
            "floodgate_retry_breaker_transitions", "Circuit breaker state changes",
            ["model", "to"], registry=registry))


class Breaker:
    """The circuit breaker of one target. ``clock`` is monotonic seconds."""

    __slots__ = ("model", "label", "settings", "metrics", "state", "consecutive", "open_until",
                 "probing", "_buckets", "_width", "_total", "_failed")

    def __init__(self, model: str, settings: BreakerSettings, metrics: BreakerMetrics,
                 label: str | None = None) -> None:
        """:param label: the metric label; ``None`` for a breaker of a name a catalogue pattern serves
        (its transitions count under the pattern, and it keeps no state series of its own)."""
        self.model = model
        self.label = label
        self.settings = settings
        self.metrics = metrics
        self.state = CLOSED
        self.consecutive = 0
        self.open_until = 0.0
        self.probing = False  # half-open: the one probe is in flight
        # Rolling window as 10 buckets: [start, outcomes, failures].
        self._buckets: deque[list[float]] = deque()
        self._width = settings.window_s / 10
        self._total = 0
        self._failed = 0
        if label == model:
            metrics.state(model).set(CLOSED)

    def reconfigure(self, settings: BreakerSettings, metrics: BreakerMetrics, label: str | None) -> None:
        """A reload's settings and metrics for a breaker kept across it: its state carries over."""
        self.settings = settings
        self.metrics = metrics
        self.label = label
        self._width = settings.window_s / 10

    def allow(self, now: float) -> tuple[bool, bool]:
        """Whether a request may use the target now, and whether it got the probe slot."""
        if self.state == CLOSED:
            return True, False
        if self.state == OPEN:
            if now < self.open_until:
                return False, False
            self._set(HALF_OPEN)
        if self.probing:
            return False, False
        self.probing = True
        return True, True

    def retry_in(self, now: float) -> float:
        """Seconds until the target may be tried again (0 when it may now)."""
        if self.state == OPEN:
            return max(0.0, self.open_until - now)
        return 1.0 if self.state == HALF_OPEN and self.probing else 0.0

    def record(self, failed: bool, now: float, probe: bool) -> None:
        """One outcome. Only the probe decides a half-open breaker; outcomes of requests
        that started before the breaker opened are ignored while it is not closed."""
        if probe:
            self.probing = False
            if failed:
                self._open(now)
            else:
                self._reset()
                self._set(CLOSED)
            return
        if self.state != CLOSED:
            return
        self._count(failed, now)
        if not failed:
            self.consecutive = 0
            return
        self.consecutive += 1
        ratio = self.settings.failure_ratio
        if self.consecutive >= self.settings.failures or (
                ratio is not None and self._total >= self.settings.min_requests
                and self._failed >= ratio * self._total):
            self._open(now)

    def release(self) -> None:
        """The probe holder ended without an outcome: let the next request probe."""
        self.probing = False

    def _count(self, failed: bool, now: float) -> None:
        buckets = self._buckets
        start = now - now % self._width
        horizon = now - self.settings.window_s
        while buckets and buckets[0][0] <= horizon:
            _, total, fails = buckets.popleft()
            self._total -= int(total)
            self._failed -= int(fails)
        if not buckets or buckets[-1][0] != start:
            buckets.append([start, 0, 0])
        bucket = buckets[-1]
        bucket[1] += 1
        self._total += 1
        if failed:
            bucket[2] += 1
            self._failed += 1

    def _reset(self) -> None:
        self.consecutive = 0
        self._buckets.clear()
        self._total = self._failed = 0

    def _open(self, now: float) -> None:
        self.open_until = now + self.settings.cooldown_s
        self._reset()
        self._set(OPEN)

    def _set(self, state: int) -> None:
        if state != self.state:
            self.state = state
            if self.label == self.model:
                self.metrics.state(self.model).set(state)
            if self.label is not None:
                self.metrics.transitions(self.label, _STATE_NAMES[state]).inc()
            log.log(logging.WARNING if state == OPEN else logging.INFO,
                    "circuit breaker of %s is now %s", self.model, _STATE_NAMES[state])
