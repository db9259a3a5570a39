"""Fleet-wide budgets on the real Redis (RedisBudgetStore): atomic reservations, settlement, expiry."""

from __future__ import annotations

import asyncio
import calendar
import time

import pytest
from conftest import blocking_client

import proxy
from plugins.cost import CostPlugin
from plugins.cost.budgets import Limits
from plugins.cost.redis_budgets import GRACE, RedisBudgetStore
from plugins.cost.report import periods
from proxy.testing import PluginHarness


def _the_11th() -> float:
    """Noon on the 11th of this month or the next: never in the past (keys expire after their period)."""
    t = time.gmtime()
    year, month = (t.tm_year, t.tm_mon) if t.tm_mday < 11 else (
        (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1))
    return float(calendar.timegm((year, month, 11, 12, 0, 0)))


NOW = _the_11th()
A = 0.000123  # one request's maximum cost


async def test_concurrent_reservations_from_several_clients_never_exceed_the_budget(redis_prefix):
    _, prefix = redis_prefix
    clients = [blocking_client() for _ in range(4)]  # four workers, four connections
    try:
        stores = [RedisBudgetStore(c, prefix) for c in clients]
        limits = Limits(daily=12.5 * A, monthly=None)
        verdicts = await asyncio.gather(*(stores[i % 4].reserve("shop", limits, A, NOW) for i in range(200)))
        granted = [v for v in verdicts if v.reservation is not None]
        assert len(granted) == 12
        assert {v.period for v in verdicts if v.reservation is None} == {"day"}
        day, month, reserved = await stores[0].spent("shop", NOW)
        assert (day, month) == (0.0, 0.0) and reserved == pytest.approx(12 * A)
        # Each settles at its maximum: the budget is spent, never passed.
        await asyncio.gather(*(stores[i % 4].settle("shop", v.reservation, A, NOW) for i, v in enumerate(granted)))
        assert await stores[1].spent("shop", NOW) == pytest.approx((12 * A, 12 * A, 0.0))
        refused = await stores[2].reserve("shop", limits, A, NOW)
        assert refused.reservation is None and refused.spent == pytest.approx(12 * A)
    finally:
        for c in clients:
            await c.aclose()


async def test_settlement_refunds_the_difference_and_charges_the_current_period(redis_prefix):
    client, prefix = redis_prefix
    store = RedisBudgetStore(client, prefix)
    limits = Limits(daily=3 * A, monthly=10 * A)
    first = (await store.reserve("shop", limits, 2 * A, NOW)).reservation
    assert first is not None
    assert (await store.reserve("shop", limits, 2 * A, NOW)).reservation is None  # 2A reserved + 2A > 3A
    await store.settle("shop", first, 0.5 * A, NOW)  # cost less than reserved: 1.5A comes back
    assert await store.spent("shop", NOW) == pytest.approx((0.5 * A, 0.5 * A, 0.0))
    assert (await store.reserve("shop", limits, 2 * A, NOW)).reservation is not None
    await store.settle("shop", None, 0.25 * A, NOW)  # a request that reserved nothing: charged only
    await store.settle("shop", first, 0.0, NOW)  # settling twice releases nothing more
    day, month, reserved = await store.spent("shop", NOW)
    assert (day, reserved) == pytest.approx((0.75 * A, 2 * A))
    tomorrow = NOW + 86400
    assert await store.spent("shop", tomorrow) == pytest.approx((0.0, 0.75 * A, 2 * A))  # same month
    verdict = await store.reserve("shop", Limits(daily=2.5 * A, monthly=None), A, tomorrow)
    assert verdict.reservation is None and verdict.reserved == pytest.approx(2 * A)  # in flight counts


async def test_spending_keys_expire_after_their_period_and_dead_leases_lapse(redis_prefix):
    client, prefix = redis_prefix
    now = time.time()
    store = RedisBudgetStore(client, prefix, lease_ttl=0.2)
    held = await store.reserve("shop", Limits(daily=A, monthly=None), A, now)
    assert held.reservation is not None
    await store.settle("bot", None, A, now)
    names, day_expiry, month_expiry = store.keys("bot", now)

    _, day_end, _, month_end = periods(now)
    assert await client.expiretime(names[0]) == int(day_end) + GRACE == day_expiry
    assert await client.expiretime(names[1]) == int(month_end) + GRACE == month_expiry
    shop = store.keys("shop", now)[0]
    assert 0 < await client.pttl(shop[2]) <= 400  # the lease keys go too
    # The worker holding the lease died: after lease_ttl (Redis's clock) the budget is free again.
    assert (await store.reserve("shop", Limits(daily=A, monthly=None), A, now)).reservation is None
    await asyncio.sleep(0.25)
    assert (await store.reserve("shop", Limits(daily=A, monthly=None), A, now)).reservation is not None


async def test_load_seeds_spending_only_where_the_fleet_has_none(redis_prefix):
    client, prefix = redis_prefix
    store = RedisBudgetStore(client, prefix)
    await store.settle("shop", None, 2 * A, NOW)
    await store.load({"shop": (9.0, 9.0), "bot": (A, 3 * A)}, NOW)
    assert await store.spent("shop", NOW) == pytest.approx((2 * A, 2 * A, 0.0))
    assert await store.spent("bot", NOW) == pytest.approx((A, 3 * A, 0.0))


async def test_two_gateways_sharing_redis_admit_within_the_budget(redis_prefix):
    # The plugin wired to the shared store: two workers' plugins, 100 concurrent admissions each.
    client, prefix = redis_prefix
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Where is my parcel?"}], "max_tokens": 16}
    top = (proxy.estimate_prompt_tokens(body) * 2.0 + 16 * 8.0) / 1e6
    shop = proxy.Principal("shop", policy=proxy.KeyPolicy(budget={"daily_usd": 12 * top}))
    harnesses, plugins = [], []
    for _ in range(2):
        clock = proxy.ManualClock(wall_start=NOW)
        plugin = CostPlugin(clock=clock, store=RedisBudgetStore(client, prefix))
        plugins.append(plugin)
        harnesses.append(await PluginHarness(plugin, clock=clock, settings={"cost": {"ledger": {"enabled": False}}}
                                             ).start())

    async def admit(h: PluginHarness) -> proxy.RequestContext | None:
        ctx = h.context(body, principal=shop)
        try:
            await h.admit(ctx)
        except proxy.Rejection as rejection:
            assert rejection.code == "insufficient_quota"
            return None
        return ctx

    admitted = [c for c in await asyncio.gather(*(admit(harnesses[i % 2]) for i in range(200))) if c is not None]
    assert len(admitted) == 12
    for i, ctx in enumerate(admitted):  # each costs its maximum
        h = harnesses[i % 2]
        h.attempt(ctx, usage=proxy.Usage(proxy.estimate_prompt_tokens(body), 16))
        await h.finished(ctx)
    for plugin in plugins:
        await plugin.settled()  # settlements go to Redis in the background
    day, _, reserved = await RedisBudgetStore(client, prefix).spent("shop", NOW)
    assert day == pytest.approx(12 * top) and reserved == 0.0
    for h in harnesses:
        await h.stop()


async def test_budget_gauges_show_the_fleets_figures_from_the_latest_reply(redis_prefix):
    # Settlements answered by one reply set the gauges once, with the last figures Redis gave.
    client, prefix = redis_prefix
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Where is my parcel?"}], "max_tokens": 16}
    top = (proxy.estimate_prompt_tokens(body) * 2.0 + 16 * 8.0) / 1e6
    shop = proxy.Principal("shop", policy=proxy.KeyPolicy(budget={"daily_usd": 10 * top}))
    clock = proxy.ManualClock(wall_start=NOW)
    plugin = CostPlugin(clock=clock, store=RedisBudgetStore(client, prefix))
    h = await PluginHarness(plugin, clock=clock, settings={"cost": {"ledger": {"enabled": False}}}).start()
    contexts = [h.context(body, principal=shop) for _ in range(3)]
    await asyncio.gather(*(h.admit(ctx) for ctx in contexts))
    for ctx in contexts[:2]:
        h.attempt(ctx, usage=proxy.Usage(proxy.estimate_prompt_tokens(body), 16))  # each costs its maximum
    await asyncio.gather(*(h.finished(ctx) for ctx in contexts[:2]))
    await plugin.settled()
    assert h.metric("floodgate_cost_budget_remaining_usd", key="shop", period="day") == pytest.approx(8 * top)
    assert h.metric("floodgate_cost_budget_reserved_usd", key="shop") == pytest.approx(top)  # the third, in flight
    h.attempt(contexts[2], usage=proxy.Usage(proxy.estimate_prompt_tokens(body), 16))
    await h.finished(contexts[2])
    await plugin.settled()
    assert h.metric("floodgate_cost_budget_remaining_usd", key="shop", period="day") == pytest.approx(7 * top)
    assert h.metric("floodgate_cost_budget_reserved_usd", key="shop") == 0.0
    await h.stop()


async def test_an_unreachable_store_refuses_budgeted_requests_and_spares_the_others():
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    clock = proxy.ManualClock(wall_start=NOW)
    plugin = CostPlugin(clock=clock, store=RedisBudgetStore(client, "fg-test:down"))
    async with PluginHarness(plugin, clock=clock, settings={"cost": {"ledger": {"enabled": False}}}) as h:
        budgeted = h.context(principal=proxy.Principal("shop", policy=proxy.KeyPolicy(budget={"daily_usd": 1})))
        with pytest.raises(proxy.Rejection) as info:
            await h.admit(budgeted)
        assert (info.value.status, info.value.code, info.value.headers["retry-after"]) == (
            503, "budget_unavailable", "1")
        await h.admit(h.context())  # no budget: not the store's business
        ctx = h.context()
        await h.admit(ctx)
        h.attempt(ctx)
        await h.finished(ctx)  # settling fails open: logged
    await client.aclose()


async def test_key_names_follow_the_utc_day_and_month_across_midnight(redis_prefix):
    client, _ = redis_prefix
    store = RedisBudgetStore(client, "p")  # names only: no call is made
    last_second = 1_767_225_599.5  # 2025-12-31 23:59:59.5 UTC
    before, after = store.keys("shop", last_second), store.keys("shop", last_second + 1)
    assert before[0][:2] == ["p:{shop}:d:20251231", "p:{shop}:m:202512"]
    assert after[0][:2] == ["p:{shop}:d:20260101", "p:{shop}:m:202601"]
    assert store.keys("shop", last_second - 3600) == before  # same day: the same names
    assert after[1] == 1_767_312_000 + GRACE and after[2] == 1_769_904_000 + GRACE
