"""Where the limiter's buckets live: chosen by the gateway's shared state, kept across reloads.

``state.backend: memory`` — one :class:`~.store.MemoryBucketStore` for the process.
``state.backend: redis`` — a :class:`FleetStore`: the fleet's buckets in Redis
(:class:`~.redis_store.RedisBucketStore`) while the state is shared, this worker's
share of every limit (:class:`~.store.LocalShareStore`, ``limit ÷ (hosts × workers)``)
while Redis is unreachable and ``state.on_error`` is ``local``; under ``reject``
:meth:`proxy.SharedState.fallback` refuses with 503 instead. It goes back to the
shared buckets by itself once the state's probe finds Redis again.

Both live in a :class:`KeptStores` kept by the state (``state.keep``), so a reload's
new plugin object decides against the same buckets, leases and local shares: a
reload resets nothing. The Redis store's background work (lease renewals, batched
calls) stops when the last generation using it shuts down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import proxy

from .redis_store import RedisBucketStore
from .settings import SharedSettings
from .store import BucketStore, Claim, Grant, LocalShareStore, MemoryBucketStore, Return

__all__ = ["LOCAL_LEASE", "FleetStore", "KeptStores", "kept_stores"]

#: The lease of a grant the local share made (its settlement goes back there, not to Redis).
LOCAL_LEASE = "local"
_KEPT = "ratelimit.stores"


class FleetStore:
    """The :class:`~.store.BucketStore` of a worker on Redis state (see the module docstring).

    A grant remembers where it was made (its lease): a request admitted from the
    local share settles there even if Redis is back by then, and one admitted by
    Redis settles in Redis (or, if that fails, lets its leases lapse).
    """

    shared = True  # other workers give back too: queued waiters re-check

    def __init__(self, state: proxy.SharedState, redis: RedisBucketStore, local: LocalShareStore) -> None:
        self.state = state
        self.redis = redis
        self.local = local

    def take(self, claims: Sequence[Claim], now: float) -> Grant | Awaitable[Grant]:
        if self.state.shared:
            return self._remote(self.redis.take(claims, now), self.local.take, claims, now)
        self.state.fallback()
        return self.local.take(claims, now)._replace(lease=LOCAL_LEASE)

    def peek(self, claims: Sequence[Claim], now: float) -> Grant | Awaitable[Grant]:
        if self.state.shared:
            return self._remote(self.redis.peek(claims, now), self.local.peek, claims, now)
        self.state.fallback()
        return self.local.peek(claims, now)

    async def _remote(self, pending: Awaitable[Grant], local: Callable[[Sequence[Claim], float], Grant],
                      claims: Sequence[Claim], now: float) -> Grant:
        """Redis's answer; if Redis fails, degraded mode (:meth:`proxy.SharedState.failed`) and
        the local share's answer (or the 503 under ``on_error: reject``). Awaited in the request's
        task (no future in between: one wake-up when the reply comes)."""
        state = self.state
        try:
            return await pending
        except state.errors as exc:
            state.failed(exc)
        state.fallback()
        return local(claims, now)._replace(lease=LOCAL_LEASE)

    def settle(self, returns: Sequence[Return], lease: str, now: float) -> Awaitable[None] | None:
        if lease == LOCAL_LEASE:
            self.local.settle(returns, lease, now)
            return None
        settled = self.redis.settle(returns, lease, now)
        if settled is not None:
            settled.add_done_callback(self._settled)
        return settled

    def _settled(self, done: asyncio.Future[None]) -> None:
        exc = None if done.cancelled() else done.exception()
        if exc is not None and isinstance(exc, self.state.errors):  # its slots lapse with their lease;
            self.state.failed(exc)                                   # unused tokens stay taken

    def lower(self, caps: Sequence[Return], now: float) -> Awaitable[None] | None:
        """What a provider says is left: applied where the fleet's buckets are now."""
        if not self.state.shared:
            self.local.lower(caps, now)
            return None
        lowered = self.redis.lower(caps, now)
        return None if lowered is None else self._lowered(lowered)

    async def _lowered(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except self.state.errors as exc:
            self.state.failed(exc)

    def hurry(self) -> None:
        self.redis.hurry()

    def close(self) -> None:
        return None  # the Redis store is closed by KeptStores, when no generation uses it


class KeptStores:
    """The limiter's stores of one application, kept across reloads by ``state.keep``."""

    def __init__(self, state: proxy.SharedState) -> None:
        self.state = state
        self.memory = MemoryBucketStore()
        self.redis: RedisBucketStore | None = None
        self.fleet: FleetStore | None = None
        if state.backend == "redis":
            share = state.local_share(1.0)
            local = LocalShareStore(max(1, round(1.0 / share)))
            self.redis = RedisBucketStore(state.pipe, state.key("rl") + ":", log_failures=False)
            self.fleet = FleetStore(state, self.redis, local)
        self._users = 0

    def store(self, shared: SharedSettings) -> BucketStore:
        """The store to decide against, with ``shared`` (a reload may change the lease) applied."""
        if self.redis is None or self.fleet is None:
            return self.memory
        self.redis.lease = shared.lease_s
        self.redis.renew_every = shared.lease_s / 3
        return self.fleet

    def acquire(self) -> None:
        """A generation starts using the stores."""
        self._users += 1

    async def release(self) -> None:
        """A generation stopped; the last one stops the Redis store's background work."""
        self._users -= 1
        if self._users <= 0 and self.redis is not None:
            await self.redis.close()


def kept_stores(state: proxy.SharedState) -> KeptStores:
    """The application's :class:`KeptStores` (made the first time)."""
    return state.keep(_KEPT, lambda: KeptStores(state))
