"""Adaptive concurrency: one deployment's limit on requests in flight, found by AIMD.

The provider's real capacity is often unknown (or lower than its documents say during
a peak). With ``adaptive: true`` the limit starts at ``initial``, doubles every round
of successes until the first sign of overload (slow start), then grows additively —
``increase`` slots per round, a round being as many successes as the limit — while
answers come back normally, and shrinks multiplicatively (``× decrease``) on a 429, a
timeout, or a time to the first token above ``latency_tolerance`` × the deployment's
unloaded time (a queue is building upstream). It never goes above the catalogue's
``limits.max_concurrent`` nor below ``min``, grows only while it is the bottleneck
(requests in flight near the limit) and shrinks at most once per two round trips: one
overshoot's burst of 429s is one decrease, not a collapse.
"""

from __future__ import annotations

import math

from .settings import AdaptiveSettings

__all__ = ["Adaptive"]

#: Weight of the newest time to first token in the fast average.
_FAST = 0.2
#: How fast the unloaded baseline follows the fast average upwards (per sample): slowly, so a
#: queue building upstream shows as a ratio well before the baseline catches up with it.
_DRIFT = 0.002


class Adaptive:
    """The AIMD controller of one deployment's concurrency limit (times in seconds)."""

    __slots__ = ("settings", "ceiling", "limit", "slow_start", "fast", "base", "last_decrease")

    def __init__(self, settings: AdaptiveSettings, ceiling: int) -> None:
        self.settings = settings
        self.ceiling = float(ceiling)
        self.limit = float(max(settings.min, min(ceiling, settings.initial)))
        self.slow_start = True
        self.fast: float | None = None  # moving average of the time to the first token
        self.base: float | None = None  # the unloaded time to the first token
        self.last_decrease = -math.inf

    @property
    def slots(self) -> int:
        """The limit as a number of requests in flight."""
        return max(1, int(self.limit))

    def observe(self, now: float, *, overloaded: bool, ttft: float | None, in_flight: int) -> bool:
        """One answered (or failed) attempt. Returns whether the limit changed.

        :param overloaded: a 429 or a timeout.
        :param ttft: its time to the first meaningful answer, if it came.
        :param in_flight: requests on the deployment now (saturation: it may grow only then).
        """
        rising = False
        if ttft is not None:
            fast = self.fast = ttft if self.fast is None else self.fast + _FAST * (ttft - self.fast)
            base = self.base
            if base is None or fast < base:
                self.base = base = fast
            else:
                self.base = base = base + _DRIFT * (fast - base)
            rising = fast > self.settings.latency_tolerance * base
        if overloaded or rising:
            if now - self.last_decrease < 2 * (self.fast or 0.0):
                return False  # the previous decrease has not shown yet
            self.last_decrease = now
            self.slow_start = False
            limit = max(float(self.settings.min), self.limit * self.settings.decrease)
            changed, self.limit = limit != self.limit, limit
            if rising and self.fast is not None and self.base is not None:
                self.fast = self.base + (self.fast - self.base) * self.settings.decrease
            return changed
        if ttft is None or in_flight < self.slots - 1:
            return False  # not the bottleneck: nothing learned about more capacity
        step = 1.0 if self.slow_start else self.settings.increase / self.limit
        limit = min(self.ceiling, self.limit + step)
        changed, self.limit = int(limit) != int(self.limit), limit
        return changed
