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
