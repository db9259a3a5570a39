"""Token buckets for the ``ratelimit`` plugin, behind a small store interface.

A bucket holds up to ``burst`` units and refills at ``rate`` units per second.
It is stored as ``(level, last_update)`` and refilled lazily when touched: no
timer or task per bucket. A bucket with ``rate == 0`` never refills; the
plugin uses those as concurrency slots (take 1 when a request starts, give it
back when it ends).

The plugin talks only to :class:`BucketStore`. :class:`MemoryBucketStore` is the
in-process implementation; a shared store (e.g. Redis, one Lua script per call)
implements the same two operations, atomically across the claims of one call.
Time is always passed in (``now``, monotonic seconds) so stores are testable
with a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol

__all__ = ["BucketStore", "Claim", "Grant", "MemoryBucketStore"]

# Float dust from refill arithmetic must not refuse a request that is due exactly now.
EPSILON = 1e-9


class Claim(NamedTuple):
    """``amount`` units wanted from bucket ``key`` (capacity ``burst``, refill ``rate``/s).

    ``rate`` and ``burst`` travel with every call, so a changed limit applies at
    once and a store needs no separate configuration step.
    """

    key: str
    rate: float
    burst: float
    amount: float


class Grant(NamedTuple):
    """The answer of :meth:`BucketStore.take` / :meth:`BucketStore.peek`.

    :param granted: every claim was (or could be) met.
    :param wait: seconds until every claim could be met with no other traffic;
        ``0`` when granted, ``inf`` when a short bucket never refills (``rate`` 0)
        or a claim is larger than its bucket.
    :param blocking: index of the claim needing the longest wait, ``-1`` if granted.
    :param levels: each bucket's level after the call (before it, if refused).
    """

    granted: bool
    wait: float
    blocking: int
    levels: tuple[float, ...]


class BucketStore(Protocol):
    """Where bucket levels live. Both operations are atomic over one call's claims."""

    def take(self, claims: Sequence[Claim], now: float) -> Grant:
        """All or nothing: take every claim's amount if every bucket has it, else none.

        Claims of one call must name distinct keys.
        """
        ...

    def peek(self, claims: Sequence[Claim], now: float) -> Grant:
        """What :meth:`take` would answer now, without taking anything."""
        ...

    def give_back(self, claim: Claim, amount: float, now: float) -> float:
        """Return ``amount`` units to ``claim``'s bucket (capped at its burst).

        A negative ``amount`` charges more: the level may drop below zero (a debt
        the refill pays off before anyone else is served). Returns the new level.
        """
        ...


class MemoryBucketStore:
    """In-process buckets: a dict of ``key -> [level, updated, rate, burst]``.

    Full buckets are indistinguishable from new ones, so every ``prune_every``
    takes they are dropped: the dict holds only buckets that are in use.
    """

    def __init__(self, *, prune_every: int = 4096) -> None:
        self._buckets: dict[str, list[float]] = {}
        self._prune_every = prune_every
        self._takes = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, claim: Claim, now: float) -> list[float]:
        bucket = self._buckets.get(claim.key)
        if bucket is None:
            bucket = self._buckets[claim.key] = [claim.burst, now, claim.rate, claim.burst]
            return bucket
        level, updated = bucket[0], bucket[1]
        if now > updated:
            level += (now - updated) * claim.rate
            bucket[1] = now
        bucket[0] = min(level, claim.burst)
        bucket[2] = claim.rate
        bucket[3] = claim.burst
        return bucket

    def _check(self, claims: Sequence[Claim], now: float) -> tuple[list[list[float]], Grant]:
        buckets = [self._bucket(claim, now) for claim in claims]
        wait, blocking = 0.0, -1
        for i, (claim, bucket) in enumerate(zip(claims, buckets)):
            short = claim.amount - bucket[0]
            if short > EPSILON:
                if claim.rate > 0 and claim.amount <= claim.burst:
                    needed = short / claim.rate
                else:
                    needed = math.inf
                if blocking < 0 or needed > wait:
                    wait, blocking = needed, i
        levels = tuple(b[0] for b in buckets)
        return buckets, Grant(blocking < 0, wait, blocking, levels)

    def peek(self, claims: Sequence[Claim], now: float) -> Grant:
        return self._check(claims, now)[1]

    def take(self, claims: Sequence[Claim], now: float) -> Grant:
        buckets, grant = self._check(claims, now)
        if not grant.granted:
            return grant
        for claim, bucket in zip(claims, buckets):
            bucket[0] -= claim.amount
        self._takes += 1
        if self._takes >= self._prune_every:
            self._takes = 0
            self.prune(now)
        return grant._replace(levels=tuple(b[0] for b in buckets))

    def give_back(self, claim: Claim, amount: float, now: float) -> float:
        bucket = self._bucket(claim, now)
        level = bucket[0] + amount
        bucket[0] = min(level, claim.burst)
        return bucket[0]

    def prune(self, now: float) -> None:
        """Drop the buckets that are full by now (they would be recreated full)."""
        full = [key for key, (level, updated, rate, burst) in self._buckets.items()
                if level + max(0.0, now - updated) * rate >= burst]
        for key in full:
            del self._buckets[key]
