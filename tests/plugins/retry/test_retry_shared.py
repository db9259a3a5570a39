"""RedisBreakerStore against the real Redis (127.0.0.1:6379): two clients stand for two workers.

Each test has its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from plugins.retry.breaker import CLOSED, HALF_OPEN, OPEN
from plugins.retry.settings import BreakerSettings
from plugins.retry.shared import RedisBreakerStore

MODEL = "deepseek-v3.2"


@pytest.fixture
async def clients() -> AsyncIterator[tuple[Redis, Redis, str]]:
    prefix = f"floodgate-test:{os.urandom(6).hex()}:"
    one, two = Redis(host="127.0.0.1", port=6379), Redis(host="127.0.0.1", port=6379)
    try:
        yield one, two, prefix
    finally:
        keys = [key async for key in one.scan_iter(match=prefix + "*")]
        if keys:
            await one.delete(*keys)
        await one.aclose()
        await two.aclose()


def stores(clients: tuple[Redis, Redis, str], **settings: object) -> tuple[RedisBreakerStore, RedisBreakerStore]:
    one, two, prefix = clients
    config = BreakerSettings(**settings)  # type: ignore[arg-type]
    return RedisBreakerStore(one, prefix, settings=config), RedisBreakerStore(two, prefix, settings=config)


async def test_failures_recorded_by_two_workers_open_it_for_both(clients):
    a, b = stores(clients, failures=3, cooldown_s=30)
    assert await a.record(MODEL, True, probe=False) == CLOSED
    assert await b.record(MODEL, True, probe=False) == CLOSED
    assert await a.record(MODEL, True, probe=False) == OPEN  # the third in a row, whoever saw it
    assert await a.allow(MODEL) == (False, False)
    assert await b.allow(MODEL) == (False, False)
    assert await b.state(MODEL) == OPEN and 29 < await b.retry_in(MODEL) <= 30
    assert await a.state("gemini-2.5-flash") == CLOSED  # per target


async def test_a_success_between_failures_resets_the_run(clients):
    a, b = stores(clients, failures=2, failure_ratio=None)
    await a.record(MODEL, True, probe=False)
    await b.record(MODEL, False, probe=False)
    assert await a.record(MODEL, True, probe=False) == CLOSED
    assert await b.record(MODEL, True, probe=False) == OPEN


async def test_failure_ratio_counts_every_worker(clients):
    a, b = stores(clients, failures=100, failure_ratio=0.5, min_requests=4)
    await a.record(MODEL, False, probe=False)
    await b.record(MODEL, True, probe=False)
    await a.record(MODEL, False, probe=False)
    assert await b.record(MODEL, True, probe=False) == OPEN  # 2 of 4, seen by two workers


async def test_exactly_one_half_open_probe_across_workers(clients):
    a, b = stores(clients, failures=1, cooldown_s=0.2)
    assert await a.record(MODEL, True, probe=False) == OPEN
    await asyncio.sleep(0.25)  # Redis's clock decides the cooldown: a lower bound only
    grants = await asyncio.gather(*(store.allow(MODEL) for store in (a, b) * 10))
    assert sum(probe for _, probe in grants) == 1 and sum(allowed for allowed, _ in grants) == 1
    assert await b.state(MODEL) == HALF_OPEN and await a.retry_in(MODEL) == 1
    # The probe's failure re-opens it for everyone; after another cooldown, one probe again.
    holder = a if grants.index((True, True)) % 2 == 0 else b
    assert await holder.record(MODEL, True, probe=True) == OPEN
    assert await b.allow(MODEL) == (False, False)
    await asyncio.sleep(0.25)
    grants = await asyncio.gather(*(store.allow(MODEL) for store in (b, a) * 10))
    assert sum(probe for _, probe in grants) == 1
    assert await a.record(MODEL, False, probe=True) == CLOSED  # its success closes it fleet-wide
    assert await b.allow(MODEL) == (True, False) and await b.state(MODEL) == CLOSED


async def test_a_released_or_expired_probe_slot_comes_back(clients):
    one, two, prefix = clients
    config = BreakerSettings(failures=1, cooldown_s=0.1)
    a = RedisBreakerStore(one, prefix, settings=config, probe_lease_s=0.2)
    b = RedisBreakerStore(two, prefix, settings=config, probe_lease_s=0.2)
    await a.record(MODEL, True, probe=False)
    await asyncio.sleep(0.15)
    assert await a.allow(MODEL) == (True, True)
    assert await b.allow(MODEL) == (False, False)
    await a.release(MODEL)  # ended without an outcome
    assert await b.allow(MODEL) == (True, True)
    await asyncio.sleep(0.25)  # b "died" holding it: the lease runs out
    assert await a.allow(MODEL) == (True, True)


async def test_keys_are_namespaced_and_expire(clients):
    one, _, prefix = clients
    a, _ = stores(clients, failures=5, window_s=10, cooldown_s=5)
    await a.record(MODEL, True, probe=False)
    keys = [key async for key in one.scan_iter(match=prefix + "*")]
    assert keys == [f"{prefix}breaker:{MODEL}".encode()]
    assert 0 < await one.pttl(keys[0]) <= 2 * 300 * 1000  # bounded by the probe lease and window
