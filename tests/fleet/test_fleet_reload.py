"""A configuration reload keeps the limiter's buckets, the breakers and the budgets (memory state).

Two harnesses given the same :class:`proxy.SharedState` are two generations of one
gateway: the second is built and started while the first still serves, as a reload does.
"""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest

import proxy
from plugins.cost import CostPlugin
from plugins.ratelimit import RateLimitPlugin
from plugins.retry import RetryPlugin
from proxy.testing import PluginHarness

JAN_1 = calendar.timegm((2026, 1, 1, 1, 0, 0))
CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
SHOP = proxy.Principal("shop", proxy.KeyPolicy(budget={"daily_usd": 1.0}))


def generation(state: proxy.SharedState, clock: proxy.ManualClock, settings: dict) -> tuple[PluginHarness, ...]:
    plugins = (RateLimitPlugin(clock=clock), RetryPlugin(clock=clock), CostPlugin(clock=clock))
    return PluginHarness(*plugins, clock=clock, settings=settings, state=state), *plugins  # type: ignore[return-value]


def block(tmp_path: Path, rps: float = 1.0) -> dict:
    return {"ratelimit": {"mode": "reject", "global": {"requests_per_second": rps, "burst": 2}},
            "retry": {"breaker": {"failures": 1, "cooldown_s": 30}},
            "cost": {"ledger": {"path": str(tmp_path / "usage.db"), "flush_interval_s": 30}}}


async def test_a_reload_keeps_buckets_breakers_budgets_and_the_open_ledger(tmp_path):
    state = proxy.SharedState()
    clock = proxy.ManualClock(wall_start=JAN_1)
    h1, limiter1, retry1, cost1 = generation(state, clock, block(tmp_path))
    await h1.start()
    # Generation 1: the burst is used up, gpt-4.1's breaker opens, the key spends and has one in flight.
    first = h1.context(CHAT, principal=SHOP)
    await h1.admit(first)
    await h1.admit(h1.context(CHAT))
    failing = h1.context(CHAT)
    failing.route = proxy.Route("gpt-4.1", (h1.config.target("gpt-4.1"),))
    await h1.next_attempt(failing)
    h1.attempt(failing, status=503, error="http")
    await h1.finished(failing)
    assert retry1.breakers["gpt-4.1"].state == 2  # open
    h1.attempt(first, usage=proxy.Usage(1000, 1000))
    await h1.finished(first)
    in_flight = h1.context(CHAT, principal=SHOP)
    clock.advance(1.0)  # one request's worth of refill
    await h1.admit(in_flight)
    spent, reserved = cost1.budgets.spent_now("shop", clock.wall())[0], cost1.budgets.spent_now(
        "shop", clock.wall())[2]
    assert spent > 0 and reserved > 0

    # The reload: a new generation on new plugin objects, started while the old one serves.
    h2, limiter2, retry2, cost2 = generation(state, clock, block(tmp_path))
    await h2.start()
    assert limiter2.store is limiter1.store and retry2.breakers["gpt-4.1"] is retry1.breakers["gpt-4.1"]
    assert cost2.ledger is cost1.ledger  # opened once, shared
    with pytest.raises(proxy.Rejection) as info:  # the bucket is still empty: no fresh burst
        await h2.admit(h2.context(CHAT))
    assert info.value.status == 429
    again = h2.context(CHAT)
    again.route = proxy.Route("gpt-4.1", (h2.config.target("gpt-4.1"),))
    with pytest.raises(proxy.Rejection) as info:  # the breaker is still open
        await h2.next_attempt(again)
    assert info.value.code == "upstream_unavailable"
    assert cost2.budgets.spent_now("shop", clock.wall()) == (spent, spent, reserved)

    # The old generation's request in flight settles into the same budget; then it stops.
    h1.attempt(in_flight, usage=proxy.Usage(10, 10))
    await h1.finished(in_flight)
    assert cost2.budgets.spent_now("shop", clock.wall())[2] == 0.0
    await h1.stop()
    # Rows of both generations in the one ledger: 3 finished (2 of them replacing their provisional
    # row), 2 provisional (admitted, not finished: the second, and the one the limiter refused).
    assert cost2.ledger is not None and cost2.ledger.pending == 5
    clock.advance(2.0)
    await h2.admit(h2.context(CHAT))  # the limiter still works after the old one stopped
    await h2.stop()  # the last user closes the ledger: every row stored
    import sqlite3

    with sqlite3.connect(tmp_path / "usage.db") as db:
        assert db.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 6  # and the last admission's


async def test_a_reload_applies_new_limits_to_kept_buckets(tmp_path):
    state = proxy.SharedState()
    clock = proxy.ManualClock(wall_start=JAN_1)
    h1, *_ = generation(state, clock, block(tmp_path, rps=1.0))
    await h1.start()
    await h1.admit(h1.context(CHAT))
    await h1.admit(h1.context(CHAT))
    h2, *_ = generation(state, clock, block(tmp_path, rps=10.0))
    await h2.start()
    await h1.stop()
    clock.advance(0.1)  # 1 request's refill at the new rate, none at the old
    await h2.admit(h2.context(CHAT))
    await h2.stop()
