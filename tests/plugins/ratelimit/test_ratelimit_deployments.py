"""Deployments in the rate limiter: placement on the deployment with headroom, buckets of scope
``deployment``, limits learned from the provider's headers, adaptive concurrency.

Decisions are tested offline on a manual clock (the harness); the split of real load over two
provider keys and a failing deployment's breaker go through the ``openai`` SDK against the mock.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

import proxy
from plugins.ratelimit import RateLimitPlugin
from plugins.ratelimit.adaptive import Adaptive
from plugins.ratelimit.learn import parse_duration, read_headers
from plugins.ratelimit.settings import AdaptiveSettings
from plugins.retry import RetryPlugin
from proxy.mock import MockSettings, MockUpstream, ModelBehaviour
from proxy.testing import PluginHarness, mock_config, run_now

MODEL = "deepseek-v3.2"
MESSAGES = [{"role": "user", "content": "我的订单什么时候发货?"}]
#: Fewest in flight first, ties in catalogue order: placement a test can predict.
IN_ORDER = {"ratelimit": {"deployments": {"strategy": "least_outstanding"}}}


def two_keys(url: str, a: dict[str, Any], b: dict[str, Any] | None, *, plugins: dict[str, Any] | None = None,
             url_a: str | None = None, **deployment: Any) -> dict[str, Any]:
    """One model on two provider keys (upstreams ``key-a`` and ``key-b``; ``b=None``: key-a alone),
    Gemini Flash as its fallback."""
    deployments = [{"upstream": "key-a", "limits": a, **deployment}]
    if b is not None:
        deployments.append({"upstream": "key-b", "limits": b, **deployment})
    config = mock_config(url, models={
        MODEL: {"deployments": deployments, "fallbacks": ["gemini-2.5-flash"],
                "price": {"input": 0.28, "output": 0.42}},
        "gemini-2.5-flash": {"price": {"input": 0.3, "output": 2.5}}}, plugin_settings=plugins or {})
    timeouts = {"first_byte": 5, "total": 30}
    config["upstreams"].update({
        "key-a": {"base_url": url_a or url, "api_key": "sk-provider-a", "timeouts": timeouts},
        "key-b": {"base_url": url, "api_key": "sk-provider-b", "timeouts": timeouts}})
    return config


async def harness(config: dict[str, Any], *plugins: Any, clock: proxy.ManualClock) -> PluginHarness:
    h = PluginHarness(*plugins, config=config, clock=clock)
    await h.start()
    return h


def chat(h: PluginHarness, principal: proxy.Principal = proxy.ANONYMOUS, **fields: Any) -> proxy.RequestContext:
    return h.context({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields},
                     principal=principal)


def answered(h: PluginHarness, ctx: proxy.RequestContext, plugin: RateLimitPlugin, *, status: int = 200,
             headers: dict[str, str] | None = None, ttft: float = 0.1, error: str | None = None,
             retry_after: float | None = None) -> proxy.AttemptRecord:
    """An attempt on the route's first target that the core saw answer, told to the plugin."""
    started = time.perf_counter() - ttft
    record = proxy.AttemptRecord(ctx.route.targets[0], started=started, status=status, error=error,
                                 retry_after=retry_after,
                                 upstream_headers=CIMultiDictProxy(CIMultiDict(headers or {})))
    if error is None:
        record.first_event = started + ttft
    ctx.attempts.append(record)
    plugin.proxy_attempt_result(ctx, record)
    return record


# -- placement -------------------------------------------------------------------------------

async def test_requests_go_to_the_deployment_with_headroom_and_the_route_says_so() -> None:
    clock = proxy.ManualClock()
    plugin = RateLimitPlugin(clock=clock)
    h = await harness(two_keys("http://upstream.invalid/v1", {"requests_per_minute": 60},
                               {"requests_per_minute": 30}), plugin, clock=clock)
    placed = Counter()
    for _ in range(90):  # both minutes' quotas, no more
        ctx = chat(h)
        h.admit_now(ctx)
        first = ctx.route.targets[0]
        placed[first.deployment] += 1
        assert [t.model for t in ctx.route.targets] == [MODEL, MODEL, "gemini-2.5-flash"]
        assert {t.deployment for t in ctx.route.targets[:2]} == {"key-a", "key-b"}
    assert placed == {"key-a": 60, "key-b": 30}
    waiting = h.spawn(h.admit(chat(h)))  # the 91st queues for the first refill of either: 1 s on key-a
    await h.settle()
    assert not waiting.done()
    await h.advance(1.0)
    assert waiting.done()
    await h.stop()


async def test_strategies_order_deployments_with_headroom() -> None:
    clock = proxy.ManualClock()
    for strategy, expected in (("least_outstanding", ["key-a", "key-b", "key-a", "key-b"]),
                               ("weighted", None)):
        plugin = RateLimitPlugin(clock=clock)
        h = await harness(two_keys("http://upstream.invalid/v1", {"max_concurrent": 10}, {"max_concurrent": 10},
                                   plugins={"ratelimit": {"deployments": {"strategy": strategy}}}),
                          plugin, clock=clock)
        firsts = []
        for _ in range(4 if expected else 400):
            ctx = chat(h)
            h.admit_now(ctx)
            firsts.append(ctx.route.targets[0].deployment)
            if not expected:
                await h.finished(ctx)
        if expected:
            assert firsts == expected  # the one with fewer in flight (ties: catalogue order)
        else:
            share = firsts.count("key-a") / len(firsts)
            assert 0.4 < share < 0.6  # equal weights: about half each
        await h.stop()
    plugin = RateLimitPlugin(clock=clock)
    h = await harness(two_keys("http://upstream.invalid/v1", {}, {},
                               plugins={"ratelimit": {"deployments": {"strategy": "latency"}}}), plugin, clock=clock)
    for target, ttft in zip(h.config.deployments(MODEL), (0.9, 0.2)):
        ctx = chat(h)
        ctx.route = proxy.Route(MODEL, (target,))
        answered(h, ctx, plugin, ttft=ttft)
    ctx = chat(h)
    h.admit_now(ctx)
    assert ctx.route.targets[0].deployment == "key-b"  # the lowest recent time to first token
    await h.stop()


async def test_a_deployment_with_an_open_breaker_gets_nothing() -> None:
    clock = proxy.ManualClock()
    limiter, retry = RateLimitPlugin(clock=clock), RetryPlugin(clock=clock)
    h = await harness(two_keys("http://upstream.invalid/v1", {"max_concurrent": 10}, {"max_concurrent": 10},
                               plugins={"retry": {"max_retries": 0, "breaker": {"failures": 2, "failure_ratio": None,
                                                                                "cooldown_s": 10}}}),
                      limiter, retry, clock=clock)
    a = h.config.deployments(MODEL)[0]
    for _ in range(2):  # key-a fails twice: its breaker opens, key-b's stays closed
        ctx = chat(h)
        await h.route(ctx)
        ctx.route = proxy.Route(MODEL, (a, *[t for t in ctx.route.targets if t != a]))
        attempt = await h.next_attempt(ctx)
        assert attempt.target == a
        h.attempt(ctx, target=a, status=503, error="http")
        await h.next_attempt(ctx)
        await h.finished(ctx)
    assert retry.breakers[f"{MODEL}@key-a"].state == 2 and retry.breakers[f"{MODEL}@key-b"].state == 0
    assert h.hooks.unavailable(chat(h), a) == "circuit open"
    held = []
    for _ in range(10):
        ctx = chat(h)
        h.admit_now(ctx)
        assert ctx.route.targets[0].deployment == "key-b"
        assert (await h.next_attempt(ctx)).target.deployment == "key-b"
        held.append(ctx)
    # key-b is full: the next request waits for it, rather than take key-a's capacity for nothing.
    waiting = h.spawn(h.admit(chat(h)))
    await h.settle()
    assert not waiting.done()
    h.attempt(held[0], target=held[0].route.targets[0])
    await h.finished(held[0])
    await h.settle()
    assert waiting.done()
    await h.stop()


async def test_a_deployment_failure_fails_over_to_the_next_deployment_before_another_model() -> None:
    clock = proxy.ManualClock()
    retry = RetryPlugin(clock=clock)
    h = await harness(two_keys("http://upstream.invalid/v1", {}, {}, plugins={"retry": {"max_retries": 1}}),
                      retry, clock=clock)
    ctx = await h.route(chat(h))
    first = await h.next_attempt(ctx)
    h.attempt(ctx, target=first.target, status=429, error="http", retry_after=3.0)
    second = await h.next_attempt(ctx)
    # The other key at once (no wait for key-a's retry-after), then key-b again, then the fallback model.
    assert (second.target.deployment, second.delay) == ("key-b", 0.0)
    h.attempt(ctx, target=second.target, status=503, error="http")
    third = await h.next_attempt(ctx)
    assert third.target.deployment == "key-b" and third.delay > 0
    h.attempt(ctx, target=third.target, status=503, error="http")
    assert (await h.next_attempt(ctx)).target.model == "gemini-2.5-flash"
    assert h.metric("floodgate_retry_deployment_failovers_total", model=MODEL, from_deployment="key-a",
                    to_deployment="key-b") == 1
    await h.stop()


# -- learned limits -----------------------------------------------------------------------------

def test_provider_headers_are_read_leniently() -> None:
    assert [parse_duration(t) for t in ("20ms", "1s", "1.5s", "6m0s", "1h2m3s", "0.25", "soon", "-1")] == \
        [0.02, 1.0, 1.5, 360.0, 3723.0, 0.25, None, None]
    view = read_headers(CIMultiDictProxy(CIMultiDict({
        "X-RateLimit-Limit-Requests": "60", "x-ratelimit-remaining-requests": "7", "x-ratelimit-reset-requests": "53s",
        "x-ratelimit-limit-tokens": "bogus", "retry-after-ms": "1500"})))
    assert (view.limit_requests, view.remaining_requests, view.reset_requests, view.limit_tokens,
            view.retry_after) == (60.0, 7.0, 53.0, None, 1.5)
    assert read_headers(None).empty and read_headers({}, retry_after=2.0).retry_after == 2.0


async def test_the_provider_lowers_the_limit_and_the_bucket_never_above_the_configured() -> None:
    clock = proxy.ManualClock()
    plugin = RateLimitPlugin(clock=clock)
    h = await harness(two_keys("http://upstream.invalid/v1", {"requests_per_minute": 600}, {}, plugins=IN_ORDER),
                      plugin, clock=clock)
    ctx = chat(h)
    h.admit_now(ctx)
    assert ctx.route.targets[0].deployment == "key-a"
    label = {"deployment": f"{MODEL}@key-a"}
    assert h.metric("floodgate_ratelimit_deployment_limit", kind="requests_per_minute", **label) == 600
    # The provider says its quota is 60/min with 5 left: the limit follows, the bucket too (less what
    # was sent since that request, which the provider had not counted yet).
    answered(h, ctx, plugin, ttft=0.0, headers={"x-ratelimit-limit-requests": "60",
                                                "x-ratelimit-remaining-requests": "5"})
    assert h.metric("floodgate_ratelimit_deployment_limit", kind="requests_per_minute", **label) == 60
    status = await plugin.proxy_status()
    row = status["deployments"][f"{MODEL}@key-a"]
    assert row["limits"]["requests_per_minute"] == 60 and row["configured"]["requests_per_minute"] == 600
    assert row["remaining"]["requests"] == pytest.approx(5, abs=0.1)
    # A provider claiming more than the catalogue allows does not raise it.
    answered(h, ctx, plugin, headers={"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "5999"})
    assert h.metric("floodgate_ratelimit_deployment_limit", kind="requests_per_minute", **label) == 600
    await h.finished(ctx)
    await h.stop()


async def test_a_429_with_retry_after_empties_the_deployment_until_then() -> None:
    clock = proxy.ManualClock()
    plugin = RateLimitPlugin(clock=clock)
    h = await harness(two_keys("http://upstream.invalid/v1", {"requests_per_minute": 600},
                               {"requests_per_minute": 600}, plugins=IN_ORDER), plugin, clock=clock)
    ctx = chat(h)
    h.admit_now(ctx)
    assert ctx.route.targets[0].deployment == "key-a"
    answered(h, ctx, plugin, status=429, error="http", retry_after=2.0, headers={"retry-after": "2"})
    assert h.metric("floodgate_ratelimit_deployment_throttled_total", deployment=f"{MODEL}@key-a") == 1
    for _ in range(5):  # key-a is out for 2 s: everything goes to key-b
        other = chat(h)
        h.admit_now(other)
        assert other.route.targets[0].deployment == "key-b"
    await h.advance(2.1)
    placed = set()
    for _ in range(4):
        other = chat(h)
        h.admit_now(other)
        placed.add(other.route.targets[0].deployment)
    assert "key-a" in placed
    # A 429 whose headers show quota left is an overload, not a quota: no bucket is emptied (it is
    # lowered to what the provider says is left, no further).
    quota = plugin.deployments.by_key[f"{MODEL}@key-b"]
    caps = quota.learn(read_headers({"x-ratelimit-remaining-requests": "50", "x-ratelimit-limit-requests": "600"},
                                    retry_after=1.0), time.perf_counter(), 429)
    assert [level for _, level in caps] == [50.0]
    await h.stop()


# -- adaptive concurrency ---------------------------------------------------------------------------

def test_aimd_finds_a_capacity_it_was_not_told() -> None:
    """A provider that takes 12 at once (latency doubles there, 429 beyond): the limit starts at 4,
    climbs, and settles around 12 without going past the catalogue's 64."""
    aimd = Adaptive(AdaptiveSettings(initial=4, decrease=0.8), ceiling=64)
    capacity, base, now = 12, 0.2, 0.0
    history = []
    for _ in range(3000):
        in_flight = aimd.slots
        over = in_flight > capacity
        ttft = base * (1 + in_flight / capacity)
        now += ttft / in_flight
        aimd.observe(now, overloaded=over, ttft=None if over else ttft, in_flight=in_flight)
        history.append(aimd.limit)
    settled = history[len(history) // 2:]
    assert 0.8 * capacity <= sum(settled) / len(settled) <= 1.2 * capacity
    assert max(history) < 20 and min(settled) >= 1
    idle = Adaptive(AdaptiveSettings(initial=4), ceiling=64)
    for _ in range(100):  # not the bottleneck: nothing is learned about more capacity
        idle.observe(now, overloaded=False, ttft=0.2, in_flight=1)
    assert idle.limit == 4


async def test_an_adaptive_limit_changes_what_waiters_and_settlements_see() -> None:
    clock = proxy.ManualClock()
    plugin = RateLimitPlugin(clock=clock)
    h = await harness(two_keys("http://upstream.invalid/v1", {"max_concurrent": 8}, None, adaptive=True,
                               plugins={"ratelimit": {"deployments": {"adaptive": {"initial": 2}}}}),
                      plugin, clock=clock)
    deployment = plugin.deployments.by_key[f"{MODEL}@key-a"]
    first, second = chat(h), chat(h)
    h.admit_now(first)
    h.admit_now(second)
    assert deployment.in_flight == 2 and deployment.concurrency == 2
    third = h.spawn(h.admit(chat(h)))  # queued for a slot, under the limit of 2
    await h.settle()
    assert not third.done()
    answered(h, first, plugin, ttft=0.1)  # saturated and healthy: slow start grows the limit...
    assert deployment.concurrency == 3
    await h.settle()
    assert third.done()  # ... and the waiter, planned under the old limit, goes at once
    assert h.metric("floodgate_ratelimit_deployment_limit", deployment=f"{MODEL}@key-a", kind="concurrency") == 3
    for _ in range(3):  # a 429: multiplicative decrease, which waiters and settlements follow
        answered(h, second, plugin, status=429, error="http")
    assert deployment.concurrency == 2
    await h.finished(first)
    await h.finished(second)
    assert deployment.in_flight == 1
    assert run_now(plugin.store.peek([s.unit for s in deployment.specs()], clock.monotonic())).levels == (1.0,)
    await h.stop()


# -- through the SDK, against the mock under quota -----------------------------------------------------

@pytest.mark.e2e
async def test_load_splits_over_two_keys_so_that_neither_is_throttled(floodgate, mock_upstream) -> None:
    """key-b has half key-a's quota (requests per minute and at once). 150 requests, 24 at a time:
    both keys serve, in proportion, and the provider never answers 429."""
    for key, rpm, capacity in (("sk-provider-a", 120, 8), ("sk-provider-b", 60, 4)):
        mock_upstream.set_quota(key, requests_per_minute=rpm, capacity=capacity)
    mock_upstream.set_behaviour(MODEL, latency_ms=60)
    gw = await floodgate(two_keys(mock_upstream.url, {"requests_per_minute": 120, "max_concurrent": 8},
                                  {"requests_per_minute": 60, "max_concurrent": 4}, weight=1,
                                  plugins={"ratelimit": {"queue": {"max_wait_ms": 5000}}}),
                         builtins=("plugins.ratelimit", "plugins.retry", "plugins.cost"))
    client = gw.openai()
    served: Counter[str] = Counter()
    gate = asyncio.Semaphore(24)

    async def one() -> None:
        async with gate:
            raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            served[raw.headers["x-floodgate-deployment"]] += 1
            assert raw.headers["x-floodgate-attempts"] == "1"

    await asyncio.gather(*(one() for _ in range(150)))
    quotas = mock_upstream.quota_stats()
    assert quotas["sk-provider-a"]["throttled"] == quotas["sk-provider-b"]["throttled"] == 0
    assert quotas["sk-provider-a"]["max_in_flight"] <= 8 and quotas["sk-provider-b"]["max_in_flight"] <= 4
    assert served["key-a"] + served["key-b"] == 150 and served["key-a"] > served["key-b"] > 20


async def test_a_failing_deployment_costs_clients_nothing(floodgate, mock_upstream) -> None:
    """key-a's provider fails every request: the first few fail over to key-b, then key-a's breaker
    opens and every request goes straight to key-b. No client sees an error."""
    async with MockUpstream(MockSettings(api_key="sk-provider-a", behaviours={
            MODEL: ModelBehaviour(error_rate=1.0, error_status=503)})) as broken:
        gw = await floodgate(two_keys(mock_upstream.url, {"max_concurrent": 20}, {"max_concurrent": 20},
                                      url_a=broken.url, plugins={
                                          "retry": {"breaker": {"failures": 3, "failure_ratio": None,
                                                                "cooldown_s": 60}}}),
                             builtins=("plugins.ratelimit", "plugins.retry"))
        mock_upstream.set_quota("sk-provider-b", capacity=100)  # a key the mock accepts
        client = gw.openai()
        for _ in range(40):
            raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            assert raw.headers["x-floodgate-deployment"] == "key-b"
        assert 3 <= broken.stats.total <= 4  # until its breaker opened (the half-open probe waits 60 s)
        assert mock_upstream.stats.by_model[MODEL] == 40
        text = await gw.metrics()
        assert f'floodgate_retry_breaker_state{{model="{MODEL}@key-a"}} 2.0' in text
        assert f'floodgate_retry_breaker_state{{model="{MODEL}@key-b"}} 0.0' in text



async def test_a_deployments_slot_follows_the_attempts() -> None:
    """A failover takes a slot on the other deployment as it starts, and gives the failed one's back."""
    clock = proxy.ManualClock()
    plugin = RateLimitPlugin(clock=clock)
    h = await harness(two_keys("http://upstream.invalid/v1", {"max_concurrent": 1}, {"max_concurrent": 1},
                               plugins=IN_ORDER), plugin, clock=clock)
    a, b = (plugin.deployments.by_key[f"{MODEL}@{k}"] for k in ("key-a", "key-b"))
    first = chat(h)
    h.admit_now(first)
    assert first.route.targets[0].deployment == "key-a" and (a.in_flight, b.in_flight) == (1, 0)

    def attempt(ctx: proxy.RequestContext, target: proxy.Target, **outcome: Any) -> None:
        record = proxy.AttemptRecord(target, started=time.perf_counter(), **outcome)
        ctx.attempts.append(record)
        plugin.proxy_attempt_started(ctx, record)
        if outcome:
            plugin.proxy_attempt_result(ctx, record)

    attempt(first, first.route.targets[0], status=503, error="http")  # key-a failed: kept for a retry...
    assert (a.in_flight, b.in_flight) == (1, 0)
    attempt(first, first.route.targets[1])  # ... until the failover to key-b takes key-b's slot instead
    assert (a.in_flight, b.in_flight) == (0, 1)
    second = chat(h)
    h.admit_now(second)  # key-a has room again
    assert second.route.targets[0].deployment == "key-a"
    third = h.spawn(h.admit(chat(h)))  # both full: it waits (in key-a's line: the first in order)
    await h.settle()
    assert not third.done()
    await h.finished(first)  # key-b's slot goes back with the request
    assert (a.in_flight, b.in_flight) == (1, 0)
    fourth = chat(h)
    h.admit_now(fourth)
    assert fourth.route.targets[0].deployment == "key-b"
    await h.finished(second)
    await h.settle()
    assert third.done() and (a.in_flight, b.in_flight) == (1, 1)
    await h.stop()


async def test_failover_goes_only_where_there_is_room_and_429s_do_not_trip_breakers() -> None:
    clock = proxy.ManualClock()
    limiter, retry = RateLimitPlugin(clock=clock), RetryPlugin(clock=clock)
    h = await harness(two_keys("http://upstream.invalid/v1", {"max_concurrent": 1}, {"max_concurrent": 1},
                               plugins={**IN_ORDER, "retry": {"max_retries": 1, "breaker": {
                                   "failures": 1, "failure_ratio": None}}}), limiter, retry, clock=clock)
    busy, ctx = chat(h), chat(h)
    h.admit_now(busy)
    h.admit_now(ctx)
    assert [c.route.targets[0].deployment for c in (busy, ctx)] == ["key-a", "key-b"]
    first = await h.next_attempt(ctx)
    record = proxy.AttemptRecord(first.target, started=time.perf_counter(), status=429, error="http",
                                 retry_after=1.0)
    ctx.attempts.append(record)
    limiter.proxy_attempt_result(ctx, record)
    assert h.hooks.unavailable(ctx, first.target) == "throttled by its provider"
    assert h.hooks.unavailable(ctx, busy.route.targets[0]) == "full"  # key-a: busy holds its one slot
    again = await h.next_attempt(ctx)
    # key-a has no room for a failover: key-b again, after its retry-after, keeping its slot meanwhile.
    assert (again.target.deployment, again.delay) == ("key-b", 1.0)
    assert retry.breakers[f"{MODEL}@key-b"].state == 0  # a 429 says full, not broken
    await h.stop()
