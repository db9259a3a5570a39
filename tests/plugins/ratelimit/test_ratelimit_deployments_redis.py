"""Deployments' buckets in the fleet's Redis store (the real one on 127.0.0.1:6379, a key prefix per
test): two "workers" place requests on one model's two provider keys without exceeding either
key's quota together, and what one worker learns from a provider's 429 holds for the other."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from test_ratelimit_deployments import MODEL, answered, chat, two_keys
from test_ratelimit_redis import Fleet, fleet  # noqa: F401 (the fixture)

import proxy
from plugins.ratelimit import RateLimitPlugin
from proxy.testing import PluginHarness


async def workers(fleet: Fleet, block: dict[str, Any], n: int = 2) -> list[tuple[PluginHarness, RateLimitPlugin]]:  # noqa: F811
    out = []
    for _ in range(n):
        plugin = RateLimitPlugin(fleet.store())
        h = PluginHarness(plugin, config=two_keys("http://upstream.invalid/v1", {"requests_per_minute": 6},
                                                  {"requests_per_minute": 3}, plugins={"ratelimit": block}))
        await h.start()
        out.append((h, plugin))
    return out


async def test_two_workers_share_each_deployments_quota(fleet: Fleet) -> None:  # noqa: F811
    pair = await workers(fleet, {"mode": "reject"})
    placed: Counter[str] = Counter()
    for i in range(9):
        h, _ = pair[i % 2]
        ctx = chat(h)
        await h.admit(ctx)
        placed[ctx.route.targets[0].deployment] += 1
    assert placed == {"key-a": 6, "key-b": 3}  # the two keys' minutes, across both workers
    h, _ = pair[1]
    with pytest.raises(proxy.Rejection) as refused:
        await h.admit(chat(h))
    assert refused.value.status == 429 and "deployment 'deepseek-v3.2@key-a'" in refused.value.message
    assert await fleet.redis.exists(fleet.prefix + f"deployment:{MODEL}@key-b:requests")
    for h, _ in pair:
        await h.stop()


async def test_a_429_seen_by_one_worker_empties_the_key_for_both(fleet: Fleet) -> None:  # noqa: F811
    pair = await workers(fleet, {"mode": "reject", "deployments": {"strategy": "least_outstanding"}})
    (h1, p1), (h2, _) = pair
    ctx = chat(h1)
    await h1.admit(ctx)
    assert ctx.route.targets[0].deployment == "key-a"
    answered(h1, ctx, p1, status=429, error="http", retry_after=30.0, headers={"retry-after": "30"})
    for task in list(p1._background):  # the lowering is on its way to Redis
        await task
    for _ in range(3):  # key-a is out for 30 s fleet-wide: worker 2 places on key-b
        other = chat(h2)
        await h2.admit(other)
        assert other.route.targets[0].deployment == "key-b"
    for h, _ in pair:
        await h.stop()


async def test_a_failover_gives_back_the_deployments_lease_and_keeps_the_others(fleet: Fleet) -> None:  # noqa: F811
    store = fleet.store()
    plugin = RateLimitPlugin(store)
    h = PluginHarness(plugin, config=two_keys("http://upstream.invalid/v1", {"max_concurrent": 2},
                                              {"max_concurrent": 2}, plugins={"ratelimit": {
                                                  "per_key": {"max_concurrent": 5},
                                                  "deployments": {"strategy": "least_outstanding"}}}))
    await h.start()
    ctx = chat(h)
    await h.admit(ctx)
    a, b = ctx.route.targets[:2]
    key_a = fleet.prefix + f"deployment:{MODEL}@key-a:concurrency"
    per_key = fleet.prefix + "key:anonymous:concurrency"
    assert await fleet.redis.zcard(key_a) == 1 and await fleet.redis.zcard(per_key) == 1
    failed = answered(h, ctx, plugin, status=503, error="http")
    assert failed.target == a
    record = proxy.AttemptRecord(b, started=0.0)
    ctx.attempts.append(record)
    plugin.proxy_attempt_started(ctx, record)  # the request moved on to key-b: key-a's slot goes back
    for task in list(plugin._background):
        await task
    assert await fleet.redis.zcard(key_a) == 0 and await fleet.redis.zcard(per_key) == 1
    assert store.live_leases == 1 and store._live[next(iter(store._live))] == [per_key]  # still renewed
    await h.finished(ctx)
    for task in list(plugin._background):
        await task
    assert await fleet.redis.zcard(per_key) == 0 and store.live_leases == 0
    await h.stop()
