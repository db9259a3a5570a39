"""The fleet's bucket store against the real Redis on 127.0.0.1:6379 (each test in its own key
prefix, deleted afterwards): atomic admissions, leases that lapse, keys that expire, Redis's clock,
one round trip each way; then the plugin deciding against it from two "workers"."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

import proxy
from plugins.ratelimit import LocalShareStore
from plugins.ratelimit.redis_store import RedisBucketStore
from plugins.ratelimit.store import Claim

REDIS_URL = "redis://127.0.0.1:6379/0"
SLOW = 0.0001  # a refill rate no test lives long enough to notice


class Fleet:
    """Stores of several "workers" (each with its own client) on one key prefix."""

    def __init__(self) -> None:
        self.prefix = f"test:ratelimit:{uuid.uuid4().hex}:"
        self.redis = Redis.from_url(REDIS_URL)  # for looking inside
        self.clients: list[Redis] = [self.redis]
        self.stores: list[RedisBucketStore] = []

    def store(self, **options: Any) -> RedisBucketStore:
        client = Redis.from_url(REDIS_URL)
        self.clients.append(client)
        store = RedisBucketStore(client, self.prefix, **options)
        self.stores.append(store)
        return store

    async def keys(self) -> list[bytes]:
        return [key async for key in self.redis.scan_iter(match=self.prefix + "*")]

    async def close(self) -> None:
        for store in self.stores:
            await store.close()
        keys = await self.keys()
        if keys:
            await self.redis.delete(*keys)
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    fleet = Fleet()
    yield fleet
    await fleet.close()


def count_scripts(store: RedisBucketStore) -> list[tuple[Any, ...]]:
    """The commands ``store`` sends from now on, each listed once Redis has answered it."""
    calls: list[tuple[Any, ...]] = []
    execute = store.redis.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        result = await execute(*args, **options)
        calls.append(args)
        return result

    store.redis.execute_command = counting  # type: ignore[method-assign]
    return calls


async def eventually(condition: Callable[[], Any], what: str, limit: float = 5.0) -> None:
    """Wait for real I/O (Redis) until ``condition()`` holds; ``limit`` only guards against a hang."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.002)


# -- the store ------------------------------------------------------------------

async def test_take_is_all_or_nothing_across_claims(fleet: Fleet) -> None:
    store = fleet.store()
    wide, narrow = Claim("wide", SLOW, 10, 1), Claim("narrow", SLOW, 1, 1)
    granted = await store.take([wide, narrow], 0.0)
    assert granted.granted and granted.levels == pytest.approx((9, 0), abs=0.01)
    refused = await store.take([wide, narrow], 0.0)
    assert not refused.granted and refused.blocking == 1 and refused.wait > 1000
    assert (await store.peek([wide], 0.0)).levels == pytest.approx((9,), abs=0.01)  # the refusal took nothing
    too_big = await store.peek([Claim("t", 1.0, 100, 101)], 0.0)
    assert too_big.wait == float("inf")


async def test_two_workers_admitting_at_once_never_exceed_a_bucket(fleet: Fleet) -> None:
    one, two = fleet.store(), fleet.store()
    requests = Claim("requests", SLOW, 50, 1)
    grants = await asyncio.gather(*(store.take([requests], 0.0) for _ in range(100) for store in (one, two)))
    assert sum(g.granted for g in grants) == 50
    slots = Claim("slots", 0.0, 10, 1)
    grants = await asyncio.gather(*(store.take([slots], 0.0) for _ in range(30) for store in (one, two)))
    held = [(store, g) for store, g in zip([one, two] * 30, grants) if g.granted]
    assert len(held) == 10 and len({g.lease for _, g in held}) == 10
    await asyncio.gather(*(store.settle([(slots, 1.0)], g.lease, 0.0) for store, g in held))
    grants = await asyncio.gather(*(store.take([slots], 0.0) for _ in range(30) for store in (one, two)))
    assert sum(g.granted for g in grants) == 10  # every slot came back exactly once


async def test_admissions_over_several_buckets_stay_atomic_under_contention(fleet: Fleet) -> None:
    one, two = fleet.store(), fleet.store()
    a, b, c = Claim("a", SLOW, 30, 1), Claim("b", SLOW, 40, 1), Claim("c", SLOW, 30, 1)
    asks = [[a, b], [b, c]] * 100
    grants = await asyncio.gather(*(store.take(claims, 0.0) for i, claims in enumerate(asks)
                                    for store in ((one, two)[i % 2],)))
    ab = sum(g.granted for claims, g in zip(asks, grants) if claims[0] is a)
    bc = sum(g.granted for claims, g in zip(asks, grants) if claims[0] is b)
    assert ab + bc == 40  # b ran out; a and c never did
    levels = (await one.peek([a, b, c], 0.0)).levels
    assert levels == pytest.approx((30 - ab, 0, 30 - bc), abs=0.01)  # nothing taken by a refused admission


async def test_a_dead_workers_slots_come_back_when_their_lease_lapses(fleet: Fleet) -> None:
    dead = fleet.store(lease=0.5, renew_every=3600)  # it never renews: as if its process died
    alive = fleet.store()
    slot = Claim("slot", 0.0, 1, 1)
    assert (await dead.take([slot], 0.0)).granted
    assert not (await alive.take([slot], 0.0)).granted
    await asyncio.sleep(0.55)
    assert (await alive.take([slot], 0.0)).granted


async def test_live_leases_are_renewed_until_settled(fleet: Fleet) -> None:
    worker = fleet.store(lease=1.0, renew_every=0.02)
    slot = Claim("slot", 0.0, 1, 1)
    key = fleet.prefix + "slot"
    grant = await worker.take([slot], 0.0)
    first = await fleet.redis.zscore(key, grant.lease)
    renewed_at: list[float] = []

    async def renewal_seen() -> None:
        while not renewed_at:
            score = await fleet.redis.zscore(key, grant.lease)
            if score is not None and score > first:
                renewed_at.append(score)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(renewal_seen(), 5.0)  # the background task extended it
    assert worker.live_leases == 1
    await worker.settle([(slot, 1.0)], grant.lease, 0.0)
    assert worker.live_leases == 0 and await fleet.redis.zscore(key, grant.lease) is None
    assert await worker.renew() == 0  # nothing left to renew


async def test_a_lapsed_lease_is_not_revived(fleet: Fleet) -> None:
    worker = fleet.store(lease=0.1, renew_every=3600)
    other = fleet.store()
    slot = Claim("slot", 0.0, 1, 1)
    await worker.take([slot], 0.0)
    await asyncio.sleep(0.15)
    assert (await other.take([slot], 0.0)).granted  # someone else holds the slot now
    assert await worker.renew() == 0  # renewing the lapsed lease would make two holders of one slot
    assert not (await other.take([slot], 0.0)).granted


async def test_keys_expire_so_redis_memory_stays_bounded(fleet: Fleet) -> None:
    long = fleet.store(lease=100.0, renew_every=3600, ttl_margin=0.05)
    tokens, slots = Claim("tokens", 0.01, 10, 4), Claim("slots", 0.0, 5, 1)
    grant = await long.take([tokens, slots], 0.0)
    # A bucket lives until it is full again (4 tokens at 0.01/s: 400 s) plus the margin...
    assert 390_000 < await fleet.redis.pttl(fleet.prefix + "tokens") <= 400_050
    # ...a lease set until its last lease lapses, plus the margin.
    assert 90_000 < await fleet.redis.pttl(fleet.prefix + "slots") <= 100_050
    await long.settle([(tokens, 4.0), (slots, 1.0)], grant.lease, 0.0)  # nothing left to keep
    assert not await fleet.redis.exists(fleet.prefix + "tokens", fleet.prefix + "slots")

    short = fleet.store(lease=0.2, renew_every=3600, ttl_margin=0.05)
    for n in range(200):  # 200 keys (keys of callers, models...), each full again 20 ms after its take
        assert (await short.take([Claim(f"key:{n}:requests", 50.0, 1, 1), Claim("s", 0.0, 500, 1)], 0.0)).granted
    await asyncio.sleep(0.3)
    keys = [fleet.prefix + name for name in ("s", *(f"key:{n}:requests" for n in range(200)))]
    assert await fleet.redis.exists(*keys) == 0


async def test_the_redis_clock_decides_not_the_workers(fleet: Fleet) -> None:
    store = fleet.store()
    requests = Claim("requests", 1.0, 1, 1)  # one per second, by Redis's clock
    assert (await store.take([requests], 0.0)).granted
    # A worker whose clock is far ahead (or behind) gets nothing more for it.
    assert not (await store.take([requests], 1e12)).granted
    assert (await store.peek([requests], -1e12)).levels[0] < 0.5
    updated = float(await fleet.redis.hget(fleet.prefix + "requests", "t"))
    seconds, micros = await fleet.redis.time()
    assert 0 <= seconds + micros / 1e6 - updated < 60  # stamped with Redis's TIME


async def test_one_round_trip_at_admission_and_one_at_finish(fleet: Fleet) -> None:
    store = fleet.store()
    claims = [Claim("requests", SLOW, 10, 1), Claim("tokens", 10.0, 1000, 100), Claim("slots", 0.0, 5, 1)]
    await store.settle([(c, 0.0) for c in claims], (await store.take(claims, 0.0)).lease, 0.0)  # scripts loaded
    calls = count_scripts(store)
    grant = await store.take(claims, 0.0)
    assert grant.granted and len(calls) == 1 and calls[0][0] == "EVALSHA"
    await store.settle([(claims[1], 60.0), (claims[2], 1.0)], grant.lease, 0.0)
    assert len(calls) == 2 and calls[1][0] == "EVALSHA"


# -- the plugin on the shared store ------------------------------------------------------

async def test_workers_share_the_limits(limiter: Any, fleet: Fleet) -> None:
    block = {"mode": "reject", "per_key": {"requests_per_second": SLOW, "burst": 5}}
    workers = [await limiter(block, store=fleet.store()) for _ in range(2)]
    admitted = refused = 0
    for n in range(10):
        lim = workers[n % 2]
        try:
            await lim.admit(lim.request())
            admitted += 1
        except proxy.Rejection:
            refused += 1
    assert (admitted, refused) == (5, 5)


async def test_the_queue_is_local_decides_on_shared_buckets_and_keeps_priority(limiter: Any, fleet: Fleet) -> None:
    block = {"mode": "queue", "queue": {"max_wait_ms": 10_000}, "global": {"max_concurrent": 1},
             "shared": {"recheck_ms": 50}}
    one, two = [await limiter(block, store=fleet.store()) for _ in range(2)]
    first = one.request()
    await one.admit(first)
    low = two.wait(two.request(two.key("low")))
    await eventually(lambda: len(two.plugin.queue) == 1, "queued")
    high = two.wait(two.request(two.key("high", priority=10)))
    await eventually(lambda: len(two.plugin.queue) == 2, "queued")
    await one.finish(first)  # released in Redis: worker two's queue is not told...
    await two.advance(0.05)  # ...it re-checks after recheck_ms
    await eventually(high.done, "the high-priority waiter admitted")
    assert not low.done()
    assert high.exception() is None


async def test_a_settlement_a_waiter_here_needs_is_sent_at_once(limiter: Any, fleet: Fleet, monkeypatch) -> None:
    # Give-backs nobody waits for may wait to share a later write; one this worker's queue waits for may not.
    monkeypatch.setattr(proxy.Coalescer, "BACKGROUND", 60.0)
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 30_000}, "global": {"max_concurrent": 1}},
                        store=fleet.store())
    first = lim.request()
    await lim.admit(first)
    waiter = lim.wait(lim.request())
    await eventually(lambda: len(lim.plugin.queue) == 1, "queued")
    lim.h.attempt(first)
    await lim.h.finished(first)
    await eventually(waiter.done, "the waiter admitted")  # not 60 s later
    assert waiter.exception() is None
    await lim.plugin.settled()


async def test_a_client_leaving_during_the_round_trip_takes_nothing(limiter: Any, fleet: Fleet) -> None:
    store = fleet.store()
    lim = await limiter({"mode": "reject", "global": {"requests_per_second": SLOW, "burst": 2, "max_concurrent": 3}},
                        store=store)
    scripts = count_scripts(store)
    ctx = await lim.h.route(lim.request())
    admission = lim.plugin.proxy_admit(ctx)
    assert admission is not None  # a remote store: the admission needs a round trip
    task = asyncio.ensure_future(admission)
    await asyncio.sleep(0)  # the take is on its way...
    task.cancel()  # ...when the client leaves
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: len(scripts) == 2, "the take, then the give-back")
    claims = [Claim("global:-:requests", SLOW, 2, 1), Claim("global:-:concurrency", 0.0, 3, 1)]
    assert (await store.peek(claims, 0.0)).levels == pytest.approx((2, 3), abs=0.01)
    assert store.live_leases == 0 and "ratelimit.admission" not in ctx.state


async def test_an_admission_settles_where_it_was_granted_after_a_switch(limiter: Any, fleet: Fleet) -> None:
    """The core switches to each worker's local share when Redis is unreachable; requests admitted
    before give their slots back to Redis, requests admitted after to the local share."""
    shared = fleet.store()
    lim = await limiter({"mode": "reject", "per_key": {"max_concurrent": 1}}, store=shared)
    before = lim.request()
    await lim.admit(before)
    lim.plugin.use_store(LocalShareStore(2))
    after = lim.admit_now(lim.request())  # local, synchronous again: one slot of the share
    lim.refused_now(lim.request())
    assert await fleet.redis.zcard(fleet.prefix + "key:anonymous:concurrency") == 1
    await lim.finish(before)
    released: list[int] = []

    async def zcard() -> None:
        while not released:
            if await fleet.redis.zcard(fleet.prefix + "key:anonymous:concurrency") == 0:
                released.append(0)
            await asyncio.sleep(0.002)

    await asyncio.wait_for(zcard(), 5.0)
    await lim.finish(after)
    lim.admit_now(lim.request())


async def test_the_shared_store_takes_the_plugins_lease(limiter: Any, fleet: Fleet) -> None:
    lim = await limiter({"shared": {"lease_s": 12}})
    store = lim.plugin.shared_store(fleet.redis, fleet.prefix)
    assert isinstance(store, RedisBucketStore) and store.lease == 12 and store.renew_every == 4
    assert store.shared and not LocalShareStore(1).shared


async def test_an_unreachable_redis_fails_closed_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a free loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    store = RedisBucketStore(client, "test:ratelimit:unreachable:")
    try:
        for _ in range(3):  # an admission that cannot be decided is not admitted
            with pytest.raises(RedisError):
                await store.take([Claim("requests", 1.0, 1, 1)], 0.0)
        assert sum("Redis failed admissions" in r.message for r in caplog.records) == 1
    finally:
        await store.close()
        await client.aclose()


async def test_closing_sends_what_was_gathered_and_answers_every_call(fleet: Fleet) -> None:
    # A shutdown loses no settlement (they may wait to share a write) and leaves no caller waiting.
    store = fleet.store()
    tokens = Claim("tokens", SLOW, 5, 3)
    grant = await store.take([tokens], 0.0)
    given = store.settle([(tokens, 3.0)], grant.lease, 0.0)  # gathered: it waits for a write to share
    asked = store.take([Claim("requests", SLOW, 5, 1)], 0.0)  # not sent yet: the sender runs next
    await store.close()
    assert given is not None and given.done() and asked.done()
    assert (await asked).granted
    assert (await fleet.store().peek([tokens], 0.0)).levels == pytest.approx((5,), abs=0.01)  # given back
