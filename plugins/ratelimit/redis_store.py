"""Token buckets and concurrency leases in Redis: one set of limits for a whole fleet.

What :class:`~.store.MemoryBucketStore` does in one process, fleet-wide:

* **One round trip per admission**, a Lua script atomic over all the request's
  claims (all or nothing), timed by Redis's clock, never the workers'
  (:mod:`.redis_scripts`). Admissions a worker makes in one turn of its event
  loop go together in one call when the turn ends (:class:`proxy.Coalescer`);
  on the gateway's pipe (:attr:`proxy.SharedState.pipe`) that call shares its
  write with the other stores' (a request's budget), so admission is one round trip.
* **Token buckets** are refilled lazily as in memory and expire when they would
  be full again (time to refill + ``ttl_margin``): Redis holds only buckets in
  use, whatever the number of keys and models.
* **Concurrency slots are leases.** A live request's leases are renewed every
  ``renew_every`` seconds (one round trip per worker for all of them), so a long
  stream keeps its slot; a dead worker stops renewing and its slots come back by
  themselves within ``lease`` seconds.
* **At most one round trip at finish**: settlements (unused tokens back, overruns
  charged, leases released) are batched the same way, and wait up to
  :attr:`proxy.Coalescer.BACKGROUND` for a write to share (the next admission's).

A caller that stops waiting for an admission (its client left) takes nothing:
what the store granted it goes back with the next settlements.

Every key is ``prefix + bucket key`` (``<prefix>key:alice:requests``). With Redis
Cluster put a hash tag in the prefix (``{floodgate}:rl:``): a script's keys must
live in one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple

import proxy

from .redis_scripts import LOWER, RENEW, SETTLE, TAKE
from .store import Claim, Grant, Return

__all__ = ["RedisBucketStore"]

log = logging.getLogger("floodgate.ratelimit")


#: Buckets whose Redis key and parameters are kept encoded; past it the memory starts again.
_ENCODED_MAX = 10_000


class _Ask(NamedTuple):
    keys: list[str]
    claims: str  # "rate burst amount" per key
    take: bool
    lease: str
    slots: list[str]  # its lease sets (if it takes)
    future: asyncio.Future[Grant]


class _Give(NamedTuple):
    keys: list[str]
    claims: str
    lease: str
    future: asyncio.Future[None] | None  # None: a give-back nobody waits for


def _fail(items: Sequence[_Ask] | Sequence[_Give], error: Exception) -> None:
    for item in items:
        if item.future is not None and not item.future.done():
            item.future.set_exception(error)


class RedisBucketStore:
    """The :class:`~.store.BucketStore` of a fleet: buckets and leases in Redis.

    :param redis: where the scripts run: the gateway's :class:`proxy.SharedState.pipe`, or a
        ``redis.asyncio.Redis`` client (bytes or decoded responses both work).
    :param prefix: put before every key; one prefix per gateway fleet.
    :param lease: seconds a concurrency slot stays held without renewal: how long
        the slots of a worker that died stay taken.
    :param renew_every: seconds between renewals of this process's live leases
        (default a third of ``lease``, so two renewals may fail before one lapses).
    :param ttl_margin: seconds every key outlives the moment it would be full (or
        its last lease lapse), so no key vanishes while it still matters.
    :param log_failures: log a warning when Redis fails (once per outage); off when the
        gateway's shared state reports outages itself.
    """

    shared = True

    def __init__(self, redis: Any, prefix: str, *, lease: float = 30.0, renew_every: float | None = None,
                 ttl_margin: float = 1.0, log_failures: bool = True) -> None:
        if lease <= 0 or ttl_margin < 0:
            raise ValueError("lease must be positive and ttl_margin not negative")
        self.redis = redis
        self.prefix = prefix
        self.lease = lease
        self.renew_every = renew_every if renew_every is not None else lease / 3
        self.ttl_margin = ttl_margin
        self._take = redis.register_script(TAKE)
        self._settle = redis.register_script(SETTLE)
        self._renew = redis.register_script(RENEW)
        self._lower = redis.register_script(LOWER)
        worker = os.urandom(6).hex()  # lease ids are unique across the fleet without coordination
        self._lease_ids = (f"{worker}:{n}" for n in itertools.count(1))
        pipe = redis if isinstance(redis, proxy.Pipe) else None
        self._asks: proxy.Coalescer[_Ask] = proxy.Coalescer(self._call_asks, self._answer_asks,
                                                            self._asks_failed, pipe)
        self._gives: proxy.Coalescer[_Give] = proxy.Coalescer(  # nobody waits: they may share a later write
            self._call_gives, self._answer_gives, self._gives_failed, pipe, within=proxy.Coalescer.BACKGROUND)
        self._live: dict[str, list[str]] = {}  # lease id -> the lease sets it holds a slot in
        # bucket -> rate, burst, Redis key, "rate burst ", "rate burst 1.0"
        self._encoded: dict[str, tuple[float, float, str, str, str]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._failing = not log_failures  # True: never logs (see _failed)
        self._log_failures = log_failures

    @property
    def live_leases(self) -> int:
        """Admissions of this process holding concurrency slots now."""
        return len(self._live)

    # -- the store interface ---------------------------------------------------------
    def take(self, claims: Sequence[Claim], now: float) -> asyncio.Future[Grant]:
        return self._ask(claims, True)

    def peek(self, claims: Sequence[Claim], now: float) -> asyncio.Future[Grant]:
        return self._ask(claims, False)

    def settle(self, returns: Sequence[Return], lease: str, now: float) -> asyncio.Future[None] | None:
        if not returns:
            return None
        keys, claims = self._encode([claim for claim, _ in returns], [amount for _, amount in returns])
        live = self._live.get(lease)
        if live is not None:  # the slots given back are no longer renewed, even if this call fails (they lapse)
            kept = [key for key in live if key not in keys]
            if kept:
                self._live[lease] = kept
            else:
                del self._live[lease]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gives.add(_Give(keys, claims, lease, future))
        return future

    def hurry(self) -> None:
        self._gives.hurry()

    async def lower(self, caps: Sequence[Return], now: float) -> None:
        """Lower buckets to what an upstream says is left (one round trip; rare: only on a 429 or
        when little is left, see :mod:`.deployments`)."""
        caps = [(claim, level) for claim, level in caps if claim.rate > 0]
        if not caps:
            return
        try:
            await self._lower([self.prefix + claim.key for claim, _ in caps],
                              [self.ttl_margin, *(f"{c.rate!r} {c.burst!r} {float(level)!r}" for c, level in caps)])
        except Exception as exc:
            self._failed("lowering buckets", exc)

    async def close(self) -> None:
        """Stop renewing leases and sending (at shutdown: requests still in flight are then
        bounded by ``lease``); calls not sent fail with ``ConnectionError``."""
        task, self._renewer = self._renewer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        closed = ConnectionError("the bucket store was closed")
        _fail(await self._asks.close(), closed)
        _fail(await self._gives.close(), closed)

    # -- calls -------------------------------------------------------------------------
    def _encode(self, claims: Sequence[Claim], amounts: Sequence[float]) -> tuple[list[str], str]:
        """The claims' Redis keys, and their "rate burst amount" argument (a bucket's key and
        parameters are encoded once; so is its claim of one unit, a request's or a slot's)."""
        encoded = self._encoded
        keys: list[str] = []
        parts: list[str] = []
        for claim, amount in zip(claims, amounts):
            entry = encoded.get(claim.key)
            if entry is None or entry[0] != claim.rate or entry[1] != claim.burst:
                if len(encoded) >= _ENCODED_MAX:
                    encoded.clear()
                head = f"{claim.rate!r} {claim.burst!r} "
                entry = encoded[claim.key] = (claim.rate, claim.burst, self.prefix + claim.key, head, head + "1.0")
            keys.append(entry[2])
            parts.append(entry[4] if amount == 1.0 else entry[3] + repr(float(amount)))
        return keys, " ".join(parts)

    def _ask(self, claims: Sequence[Claim], take: bool) -> asyncio.Future[Grant]:
        keys, encoded = self._encode(claims, [claim.amount for claim in claims])
        slots = [key for key, claim in zip(keys, claims) if claim.rate <= 0] if take else []
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._asks.add(_Ask(keys, encoded, take, next(self._lease_ids) if slots else "", slots, future))
        return future

    def _call_asks(self, batch: list[_Ask]) -> Awaitable[Any]:
        keys: list[str] = []
        args: list[str | float | int] = [self.lease, self.ttl_margin]
        for ask in batch:
            keys += ask.keys
            args += (len(ask.keys), ask.claims, "1" if ask.take else "0", ask.lease)
        return self._take(keys=keys, args=args)

    def _answer_asks(self, batch: list[_Ask], replies: Any) -> None:
        self._failing = not self._log_failures
        for ask, reply in zip(batch, replies):
            out = reply.split()
            granted = out[0] in (b"1", "1")
            lease = ask.lease if granted else ""
            if granted and ask.slots:
                self._live[lease] = ask.slots
                if self._renewer is None:
                    self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
            if ask.future.done():  # its caller stopped waiting: it takes nothing
                if granted and ask.take:
                    self._live.pop(lease, None)
                    self._gives.add(_Give(ask.keys, ask.claims, lease, None))
                continue
            ask.future.set_result(Grant(granted, float(out[2]), int(out[1]), tuple(map(float, out[3:])), lease))

    def _asks_failed(self, batch: list[_Ask], exc: Exception) -> None:
        self._failed("admissions", exc)
        _fail(batch, exc)

    def _call_gives(self, batch: list[_Give]) -> Awaitable[Any]:
        keys: list[str] = []
        args: list[str | float | int] = [self.ttl_margin]
        for give in batch:
            keys += give.keys
            args += (len(give.keys), give.claims, give.lease)
        return self._settle(keys=keys, args=args)

    def _answer_gives(self, batch: list[_Give], _: Any) -> None:
        self._failing = not self._log_failures
        for give in batch:
            if give.future is not None and not give.future.done():
                give.future.set_result(None)

    def _gives_failed(self, batch: list[_Give], exc: Exception) -> None:
        self._failed("settlements", exc)
        _fail(batch, exc)

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._failing:  # once per outage, not once per call
            self._failing = True
            log.warning("rate limit: Redis failed %s: %s", what, exc)

    # -- leases ------------------------------------------------------------------------
    async def renew(self) -> int:
        """Extend every live lease of this process by ``lease`` seconds; how many were still live."""
        held = [(key, lease) for lease, keys in list(self._live.items()) for key in keys]
        if not held:
            return 0
        kept = int(await self._renew([key for key, _ in held], [self.lease, self.ttl_margin,
                                                                 *(lease for _, lease in held)]))
        if kept < len(held):
            log.warning("%d of %d concurrency leases lapsed before their renewal (was this worker stalled "
                        "for %gs?): their slots may have been granted again", len(held) - kept, len(held),
                        self.lease)
        return kept

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                await self.renew()
            except Exception as exc:  # Redis away: the leases lapse unless a later renewal gets through
                self._failed("lease renewals", exc)
