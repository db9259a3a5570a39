"""The plugins wired to a Redis state (the real Redis): buckets, budgets and breakers shared by two
"workers" (two SharedStates on one prefix), degraded mode and the way back."""

from __future__ import annotations

import asyncio
import calendar
import time

import pytest
import redis.asyncio
from fleet_kit import eventually, redis_server_fixture, workers_fixture  # noqa: F401 (fixtures)

import proxy
from plugins.cost import CostPlugin
from plugins.ratelimit import RateLimitPlugin
from plugins.ratelimit.fleet import LOCAL_LEASE, FleetStore
from plugins.retry import RetryPlugin
from plugins.retry.breaker import CLOSED, HALF_OPEN, OPEN
from proxy.testing import PluginHarness

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def _noon_today() -> float:
    t = time.gmtime()
    return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 12, 0, 0)))


async def limiter(state: proxy.SharedState, block: dict) -> tuple[PluginHarness, RateLimitPlugin]:
    plugin = RateLimitPlugin(clock=proxy.LoopClock())
    h = PluginHarness(plugin, settings={"ratelimit": block}, state=state)
    await h.start()
    return h, plugin


async def admitted(h: PluginHarness, n: int) -> list[proxy.RequestContext]:
    async def one() -> proxy.RequestContext | None:
        ctx = h.context(CHAT)
        try:
            await h.admit(ctx)
        except proxy.Rejection as rejection:
            assert rejection.status == 429
            return None
        return ctx

    return [c for c in await asyncio.gather(*(one() for _ in range(n))) if c is not None]


async def test_two_workers_take_from_the_same_buckets_under_the_states_prefix(workers):
    block = {"mode": "reject", "global": {"requests_per_second": 0.001, "burst": 10, "max_concurrent": 6}}
    (a, plugin_a), (b, _) = [await limiter(await workers.state(), block) for _ in range(2)]
    assert isinstance(plugin_a.store, FleetStore)
    got = await asyncio.gather(admitted(a, 10), admitted(b, 10))
    assert sum(map(len, got)) == 6  # the fleet's concurrency limit, not 6 per worker
    assert all(k.startswith(f"{workers.prefix}:rl:global:") for k in await workers.keys())
    for h, ctxs in zip((a, b), got):
        for ctx in ctxs:
            h.attempt(ctx)
            await h.finished(ctx)
    await eventually(lambda: not plugin_a.store.redis._live, "the slots are released")  # type: ignore[attr-defined]
    got = await asyncio.gather(admitted(a, 10), admitted(b, 10))
    assert sum(map(len, got)) == 4  # the slots came back; the request bucket had 10
    for h in (a, b):
        await h.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("on_error", ["local", "reject"])
async def test_degraded_limits_are_the_local_share_then_shared_again(workers, redis_server, on_error):
    block = {"mode": "reject", "global": {"requests_per_second": 0.001, "burst": 8}}
    state = await workers.state(url=redis_server.url, on_error=on_error, check_interval=0.2,
                                timeouts={"connect": 0.2, "command": 0.2})
    h, plugin = await limiter(state, block)
    assert len(await admitted(h, 3)) == 3  # from Redis's bucket of 8
    await redis_server.kill()
    if on_error == "reject":
        with pytest.raises(proxy.Rejection) as info:
            await h.admit(h.context(CHAT))
        assert info.value.status == 503 and info.value.code == "state_unavailable"
    else:
        local = await admitted(h, 10)
        assert len(local) == 4  # this worker's share: 8 ÷ 2 workers, from local buckets
        assert all(c.state["ratelimit.admission"].lease == LOCAL_LEASE for c in local)
    assert state.degraded and h.metric("floodgate_state_degraded") == 1
    await redis_server.start()  # empty: a fresh bucket of 8
    await eventually(lambda: state.shared, "the probe finds Redis again")
    assert len(await admitted(h, 10)) == 8  # the fleet's bucket again, no restart
    await h.stop()


async def test_a_breaker_opened_by_one_worker_is_open_for_the_other_and_probed_once(workers):
    block = {"breaker": {"failures": 2, "cooldown_s": 0.3}}
    harnesses, plugins = [], []
    for _ in range(2):
        plugin = RetryPlugin(clock=proxy.LoopClock())
        h = PluginHarness(plugin, settings={"retry": block}, state=await workers.state())
        await h.start()
        harnesses.append(h)
        plugins.append(plugin)
    a, b = harnesses
    route = proxy.Route("gpt-4.1", (a.config.target("gpt-4.1"), a.config.target("claude-sonnet-4.5")))

    async def fail_once(h: PluginHarness) -> None:
        ctx = h.context(CHAT)
        ctx.route = route
        attempt = await h.next_attempt(ctx)
        assert attempt.target.model == "gpt-4.1"
        h.attempt(ctx, target=attempt.target, status=503, error="http")
        await h.finished(ctx)

    await fail_once(a)
    await fail_once(a)  # the second failure in a row, seen by worker A alone
    breaker_b = plugins[1].breakers["gpt-4.1"]
    await eventually(lambda: breaker_b.state == OPEN, "worker B hears the breaker opened")
    ctx = b.context(CHAT)
    ctx.route = route
    assert (await b.next_attempt(ctx)).target.model == "claude-sonnet-4.5"  # B's traffic falls back

    await asyncio.sleep(0.35)  # the cooldown (Redis's clock): one of the workers claims the probe slot
    await eventually(lambda: any(p.breakers["gpt-4.1"].token for p in plugins), "a worker holds the probe slot")
    probes = []
    for _ in range(5):
        for h in harnesses:
            ctx = h.context(CHAT)
            ctx.route = route
            attempt = await h.next_attempt(ctx)
            if attempt.target.model == "gpt-4.1":
                probes.append((h, ctx, attempt))
    assert len(probes) == 1  # one probe in the whole fleet
    await eventually(lambda: {p.breakers["gpt-4.1"].state for p in plugins} == {HALF_OPEN},
                     "half-open everywhere (published to the other worker)")
    h, ctx, attempt = probes[0]
    h.attempt(ctx, target=attempt.target, status=200)
    await h.finished(ctx)  # its success closes the breaker everywhere
    await eventually(lambda: all(p.breakers["gpt-4.1"].state == CLOSED for p in plugins), "closed everywhere")
    for h in harnesses:
        await h.stop()


@pytest.mark.e2e
async def test_budgets_are_shared_degrade_to_a_local_share_and_the_outage_spending_is_replayed(workers,
                                                                                                redis_server):
    now = _noon_today()
    day_key = f"{workers.prefix}:budget:{{shop}}:d:{time.strftime('%Y%m%d', time.gmtime(now))}"
    shop = proxy.Principal("shop", proxy.KeyPolicy(budget={"daily_usd": 1.0}))
    states = [await workers.state(url=redis_server.url, check_interval=0.2, timeouts={"connect": 0.2, "command": 0.2})
              for _ in range(2)]
    harnesses, plugins = [], {}
    for state in states:
        clock = proxy.ManualClock(wall_start=now)
        plugin = CostPlugin(clock=clock)
        h = PluginHarness(plugin, clock=clock, state=state, settings={"cost": {"ledger": {"enabled": False}}})
        harnesses.append(await h.start())
        plugins[h] = plugin
    a, b = harnesses
    body = {**CHAT, "max_tokens": 30_000}  # at most 0.24 $ a request at gpt-4.1's prices
    fleet = redis.asyncio.Redis(port=redis_server.port)

    async def spend(h: PluginHarness, completion: int) -> None:
        ctx = h.context(body, principal=shop)
        await h.admit(ctx)
        h.attempt(ctx, usage=proxy.Usage(0, completion))
        await h.finished(ctx)
        await plugins[h].settled()  # the settlement is in Redis (or owed, in an outage)

    try:
        await spend(a, 25_000)  # 0.20 $
        await spend(b, 25_000)  # 0.40 $ for the fleet
        assert int(await fleet.get(day_key)) / 1e9 == pytest.approx(0.4)
        redis_server.pause()
        # A's share: (1.00 - 0.40) ÷ 2 = 0.30 $: one request of at most 0.24 $ fits, the next does not.
        await spend(a, 25_000)
        assert states[0].degraded
        with pytest.raises(proxy.Rejection) as info:
            await spend(a, 1)
        assert info.value.code == "insufficient_quota" and "daily budget of $1" in info.value.message
        redis_server.resume()
        await eventually(lambda: states[0].shared, "the probe finds Redis again")
        await spend(a, 1)  # back on Redis: the outage's 0.20 $ is replayed into the fleet's spending
        await eventually_async(fleet, day_key, 0.6 + 8e-6)
    finally:
        redis_server.resume()
        await fleet.aclose()
        for h in harnesses:
            await h.stop()


async def eventually_async(client: redis.asyncio.Redis, key: str, usd: float) -> None:
    for _ in range(300):
        if int(await client.get(key) or 0) / 1e9 == pytest.approx(usd):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} is {int(await client.get(key) or 0) / 1e9}, not {usd}")


async def test_a_reload_on_redis_state_keeps_the_stores_and_the_old_generation_does_not_close_them(workers):
    state = await workers.state()
    block = {"mode": "reject", "global": {"requests_per_second": 0.001, "burst": 4, "max_concurrent": 10}}
    old, old_plugin = await limiter(state, block)
    held = await admitted(old, 1)  # a request of the old generation in flight, holding a lease
    new, new_plugin = await limiter(state, block)  # the reload: started while the old one serves
    assert new_plugin.store is old_plugin.store
    old.attempt(held[0])
    await old.finished(held[0])
    await old.stop()  # the old generation stops: the shared store (lease renewals, batches) goes on
    assert len(await admitted(new, 10)) == 3  # the bucket carried over: 4 - 1
    await new.stop()


@pytest.mark.e2e
async def test_breakers_decide_locally_while_redis_is_away_and_follow_the_fleet_again(workers, redis_server):
    state = await workers.state(url=redis_server.url, check_interval=0.2, timeouts={"connect": 0.2, "command": 0.2})
    plugin = RetryPlugin(clock=proxy.LoopClock())
    h = PluginHarness(plugin, settings={"retry": {"breaker": {"failures": 2, "cooldown_s": 30}}}, state=state)
    await h.start()
    route = proxy.Route("gpt-4.1", (h.config.target("gpt-4.1"), h.config.target("claude-sonnet-4.5")))

    async def outcome(status: int) -> str:
        ctx = h.context(CHAT)
        ctx.route = route
        attempt = await h.next_attempt(ctx)
        h.attempt(ctx, target=attempt.target, status=status, error=None if status == 200 else "http")
        await h.finished(ctx)
        return attempt.target.model

    await redis_server.kill()
    await eventually(lambda: state.degraded, "degraded mode")
    assert [await outcome(503) for _ in range(2)] == ["gpt-4.1", "gpt-4.1"]
    assert plugin.breakers["gpt-4.1"].state == OPEN  # this worker's own outcomes opened it, locally
    assert await outcome(200) == "claude-sonnet-4.5"
    await redis_server.start()  # empty: the fleet's breaker is closed
    await eventually(lambda: state.shared and plugin.breakers["gpt-4.1"].state == CLOSED,
                     "the breaker follows the fleet's state again")
    assert await outcome(200) == "gpt-4.1"
    await h.stop()


@pytest.mark.e2e
async def test_queued_requests_wait_out_an_outage_under_reject(workers, redis_server, caplog):
    state = await workers.state(url=redis_server.url, on_error="reject", check_interval=0.1,
                                timeouts={"connect": 0.1, "command": 0.1})
    block = {"mode": "queue", "queue": {"max_wait_ms": 600}, "global": {"requests_per_second": 2, "burst": 1}}
    h, plugin = await limiter(state, block)
    assert len(await admitted(h, 1)) == 1
    waiting = asyncio.ensure_future(h.admit(h.context(CHAT)))  # queued: the bucket refills in 0.5 s
    await asyncio.sleep(0.05)
    assert len(plugin.queue) == 1
    await redis_server.kill()
    await eventually(lambda: state.degraded, "degraded mode")
    with pytest.raises(proxy.Rejection) as info:  # its scans find no shared state: it waits out its deadline
        await waiting
    assert info.value.status == 429 and len(plugin.queue) == 0
    assert not [r for r in caplog.records if r.name == "asyncio"]  # no scan blew up in a callback
    await h.stop()


async def test_a_requests_budget_and_rate_limits_share_one_round_trip_at_admission_and_at_finish(workers):
    """The budget's reservation and the limiter's take go out in one write to Redis (the cost plugin's
    decision is deferred until the limiter has asked too), and so do their settlements."""
    state = await workers.state()
    clock = proxy.ManualClock(wall_start=_noon_today())
    cost = CostPlugin(clock=clock)
    h = PluginHarness(cost, RateLimitPlugin(clock=proxy.LoopClock()), clock=clock, state=state,
                      settings={"cost": {"ledger": {"enabled": False}},
                                "ratelimit": {"per_key": {"requests_per_second": 100, "tokens_per_minute": 1_000_000}}})
    await h.start()
    shop = proxy.Principal("shop", proxy.KeyPolicy(budget={"daily_usd": 5.0}))
    try:
        await state.pipe.execute("PING")  # connected (and the scripts loaded by a first request)
        ctx = h.context(CHAT, principal=shop)
        await h.admit(ctx)
        h.attempt(ctx, usage=proxy.Usage(10, 5))
        await h.finished(ctx)
        await cost.settled()
        for _ in range(3):
            ctx = h.context(CHAT, principal=shop)
            await h.route(ctx)
            writes, commands = state.pipe.writes, state.pipe.commands
            await h.admit(ctx)
            assert (state.pipe.writes - writes, state.pipe.commands - commands) == (1, 2)
            assert ctx.response_headers.get("x-ratelimit-remaining-requests") is not None
            h.attempt(ctx, usage=proxy.Usage(10, 5))
            writes, commands = state.pipe.writes, state.pipe.commands
            await h.finished(ctx)
            await cost.settled()
            await eventually(lambda before=commands: state.pipe.commands - before >= 2, "the settlements")
            assert (state.pipe.writes - writes, state.pipe.commands - commands) == (1, 2)
    finally:
        await h.stop()
