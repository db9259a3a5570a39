"""Token buckets for the ``ratelimit`` plugin, behind a small store interface.

A bucket holds up to ``burst`` units and refills at ``rate`` units per second.
It is stored as ``(level, last_update)`` and refilled lazily when touched: no
timer or task per bucket. A bucket with ``rate == 0`` never refills: it counts
concurrency slots (take 1 when a request starts, give it back when it ends; a
shared store keeps them as leases that expire, see :mod:`.redis_store`). Its level
is the free slots: when its capacity changes (an adaptive limit), so do they.

The plugin talks only to :class:`BucketStore`. Its operations return their
answer directly when the store is in this process (:class:`MemoryBucketStore`,
:class:`LocalShareStore`) and an awaitable when they need a round trip
(:class:`~.redis_store.RedisBucketStore`): the memory path never creates a
coroutine. ``now`` is the caller's monotonic clock; a shared store ignores it and
uses its own (one clock for the whole fleet).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from typing import NamedTuple, Protocol

__all__ = ["BucketStore", "Claim", "Grant", "LocalShareStore", "MemoryBucketStore", "Return"]

# Float dust from refill arithmetic must not refuse a request that is due exactly now.
EPSILON = 1e-9
# Waits are rounded down by this much of a unit: a timer set for "when it is due" fires when the
# bucket is within EPSILON of enough (never a hair before, refused by float dust).
HALF_EPSILON = EPSILON / 2


class Claim(NamedTuple):
    """``amount`` units wanted from bucket ``key`` (capacity ``burst``, refill ``rate``/s).

    ``rate`` and ``burst`` travel with every call, so a changed limit applies at
    once and a store needs no separate configuration step. ``rate == 0`` makes it
    a concurrency slot.
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
    :param lease: what :meth:`BucketStore.settle` needs to find this admission's
        concurrency slots again (a shared store's lease id; ``""`` in memory).
    """

    granted: bool
    wait: float
    blocking: int
    levels: tuple[float, ...]
    lease: str = ""


#: ``(claim, amount)``: give ``amount`` units back to ``claim``'s bucket (negative: charge more).
Return = tuple[Claim, float]


class BucketStore(Protocol):
    """Where bucket levels live. Each operation is atomic over one call's claims.

    Each returns its answer, or an awaitable of it when the store must ask
    another process (callers check ``isinstance(result, Grant)``). A caller
    that stops awaiting a :meth:`take` (its client left) takes nothing: the
    store gives back whatever it granted.
    """

    #: Other processes take and give back too: a waiter cannot count on this
    #: process's give-backs to wake it, so the queue re-checks now and then.
    shared: bool

    def take(self, claims: Sequence[Claim], now: float) -> Grant | Awaitable[Grant]:
        """All or nothing: take every claim's amount if every bucket has it, else none.

        Claims of one call must name distinct keys.
        """
        ...

    def peek(self, claims: Sequence[Claim], now: float) -> Grant | Awaitable[Grant]:
        """What :meth:`take` would answer now, without taking anything."""
        ...

    def settle(self, returns: Sequence[Return], lease: str, now: float) -> Awaitable[None] | None:
        """Give back what a finished request did not use, in one step.

        A token bucket gets ``amount`` back (capped at its burst; a negative
        amount charges an overrun, leaving a debt the refill pays off first); a
        concurrency slot (``rate == 0``) is released, ``lease`` naming it.
        """
        ...

    def lower(self, caps: Sequence[Return], now: float) -> Awaitable[None] | None:
        """Lower each ``(claim, level)`` bucket to at most ``level`` (what an upstream says is left;
        below zero: a debt the refill pays first). Never raises a level; concurrency slots
        (``rate == 0``) are left alone."""
        ...

    def hurry(self) -> None:
        """Send the settlements gathered so far without waiting to share a later write (a waiter
        of this process needs what they give back); nothing to do for a store in this process."""
        ...

    def close(self) -> Awaitable[None] | None:
        """Stop background work (a shared store's lease renewals)."""
        ...


class MemoryBucketStore:
    """In-process buckets: a dict of ``key -> [level, updated, rate, burst]``.

    Full buckets are indistinguishable from new ones, so every ``prune_every``
    takes they are dropped: the dict holds only buckets that are in use.
    """

    shared = False

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
        if claim.rate == 0 and claim.burst != bucket[3]:
            level += claim.burst - bucket[3]  # a concurrency limit changed: so did the free slots
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
                rate = claim.rate
                needed = (short - HALF_EPSILON) / rate if rate > 0 and claim.amount <= claim.burst else math.inf
                if blocking < 0 or needed > wait:
                    wait, blocking = needed, i
        return buckets, Grant(blocking < 0, wait, blocking, tuple(b[0] for b in buckets))

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
        """Return ``amount`` units to ``claim``'s bucket (capped at its burst); the new level."""
        bucket = self._bucket(claim, now)
        bucket[0] = min(bucket[0] + amount, claim.burst)
        return bucket[0]

    def settle(self, returns: Sequence[Return], lease: str, now: float) -> None:
        for claim, amount in returns:
            self.give_back(claim, amount, now)

    def lower(self, caps: Sequence[Return], now: float) -> None:
        for claim, level in caps:
            if claim.rate > 0:
                bucket = self._bucket(claim, now)
                bucket[0] = min(bucket[0], level)

    def hurry(self) -> None:
        return None  # settled at once

    def close(self) -> None:
        return None

    def prune(self, now: float) -> None:
        """Drop the buckets that are full by now (they would be recreated full)."""
        full = [key for key, (level, updated, rate, burst) in self._buckets.items()
                if level + max(0.0, now - updated) * rate >= burst]
        for key in full:
            del self._buckets[key]


class LocalShareStore(MemoryBucketStore):
    """This process's share of shared limits: every rate and capacity divided by ``workers``.

    The fallback while the shared store is unreachable: each of ``workers``
    processes enforces ``limit / workers`` from local buckets, so together they
    stay within the limit. A share is never smaller than one request's claim (a
    share of a concurrency limit below one slot would refuse every request), so
    with limits smaller than the number of workers the fleet may exceed them by
    at most one request per worker.
    """

    def __init__(self, workers: int, *, prune_every: int = 4096) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        super().__init__(prune_every=prune_every)
        self.workers = workers

    def _share(self, claims: Sequence[Claim]) -> list[Claim]:
        n = self.workers
        return [Claim(c.key, c.rate / n, max(c.burst / n, c.amount), c.amount) for c in claims]

    def peek(self, claims: Sequence[Claim], now: float) -> Grant:
        return super().peek(self._share(claims), now)

    def take(self, claims: Sequence[Claim], now: float) -> Grant:
        return super().take(self._share(claims), now)

    def settle(self, returns: Sequence[Return], lease: str, now: float) -> None:
        shares = self._share([claim for claim, _ in returns])
        super().settle([(share, amount) for share, (_, amount) in zip(shares, returns)], lease, now)

    def lower(self, caps: Sequence[Return], now: float) -> None:
        shares = self._share([claim for claim, _ in caps])
        super().lower([(share, level / self.workers) for share, (_, level) in zip(shares, caps)], now)
