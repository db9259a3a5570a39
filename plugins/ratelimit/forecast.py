"""Predicted waits: whether a request that must wait would be admitted within ``queue.max_wait_ms``.

A request the queue cannot admit in time is refused at once (429 with
``retry-after``) instead of holding its socket until its deadline. Its wait is
the longest of its buckets', each predicted from what is known now:

* a bucket that refills: what the waiters ahead of it take from that bucket
  (higher priority, or the same priority and earlier: the queue's order), plus
  its own claim, less the level now, at the refill rate:
  ``(ahead + amount - level) / rate``;
* a concurrency limit: the slots it needs beyond the free ones (``ahead + 1 -
  free``) come back as requests in flight end. With ``in_use`` slots held for
  ``hold`` seconds on average (a moving average over the requests of that limit
  that ended), one comes back every ``hold / in_use`` seconds. Until a request
  of that limit has ended the wait is unknown and counts as 0: the deadline
  decides.

With a shared store the levels are the fleet's and the queue ahead is this
process's own. The prediction assumes the queue takes each refill when it is
due: with a burst of 1, an event loop late by more than one refill interval
loses the refill that overflows the cap, and a waiter may still reach its
deadline (a burst of a few requests absorbs such lateness).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .store import EPSILON, Claim

__all__ = ["Forecast"]

#: Weight of the newest hold time in the moving average (about the last ten requests count).
ALPHA = 0.2
#: Limits whose hold times are remembered; past it the memory starts again (a bound, not an LRU).
MAX_HOLDS = 10_000


class Forecast:
    """What is queued on each bucket (by priority), and how long concurrency slots are held."""

    def __init__(self) -> None:
        self._queued: dict[str, dict[int, list[float]]] = {}  # bucket -> priority -> [amount, waiters]
        self._holds: dict[str, float] = {}  # concurrency bucket -> mean seconds a slot is held

    def add(self, claims: Sequence[Claim], priority: int) -> None:
        """A waiter joined the queue."""
        for claim in claims:
            entry = self._queued.setdefault(claim.key, {}).setdefault(priority, [0.0, 0])
            entry[0] += claim.amount
            entry[1] += 1

    def remove(self, claims: Sequence[Claim], priority: int) -> None:
        """A waiter left the queue (admitted, timed out or gone)."""
        for claim in claims:
            by_priority = self._queued[claim.key]
            entry = by_priority[priority]
            entry[1] -= 1
            if entry[1]:
                entry[0] -= claim.amount
                continue
            del by_priority[priority]
            if not by_priority:
                del self._queued[claim.key]

    def ahead(self, key: str, priority: int) -> float:
        """What waiters served before a newcomer of ``priority`` will take from bucket ``key``."""
        by_priority = self._queued.get(key)
        if not by_priority:
            return 0.0
        return sum(amount for p, (amount, _) in by_priority.items() if p >= priority)

    def held(self, claims: Sequence[Claim], seconds: float) -> None:
        """A request that held the concurrency slots among ``claims`` for ``seconds`` ended."""
        holds = self._holds
        for claim in claims:
            if claim.rate > 0:
                continue
            mean = holds.get(claim.key)
            if mean is None and len(holds) >= MAX_HOLDS:
                holds.clear()
            holds[claim.key] = seconds if mean is None else mean + ALPHA * (seconds - mean)

    def wait(self, claims: Sequence[Claim], levels: Sequence[float], priority: int) -> tuple[float, int]:
        """The predicted wait of a newcomer of ``priority`` (buckets at ``levels`` now) and the
        index of the bucket it waits longest for (``-1``: nothing to wait for that is known)."""
        worst, index = 0.0, -1
        for i, (claim, level) in enumerate(zip(claims, levels)):
            needed = self.ahead(claim.key, priority) + claim.amount - level
            if needed <= EPSILON:
                continue
            if claim.rate > 0:
                wait = needed / claim.rate if claim.amount <= claim.burst else math.inf
            else:
                hold = self._holds.get(claim.key)
                if hold is None:
                    continue
                wait = needed * hold / max(claim.burst - level, 1.0)
            if index < 0 or wait > worst:
                worst, index = wait, i
        return worst, index
