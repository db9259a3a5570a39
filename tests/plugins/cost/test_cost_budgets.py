"""Budgets of the cost plugin, offline: reservations, settlement, periods (a ManualClock, no sockets)."""

from __future__ import annotations

import calendar
from typing import Any

import pytest

import proxy
from plugins.cost import CostPlugin
from proxy.testing import MOCK_MODELS, PluginHarness, run_now

GPT41 = (2.00, 8.00)  # USD per million tokens: input, output
CLAUDE = (3.00, 15.00)
JAN_1 = calendar.timegm((2026, 1, 1, 0, 0, 0))


def chat(content: str = "Where is my parcel?", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": content}], **extra}


def max_cost(body: dict[str, Any], price: tuple[float, float], default_output: int = 1024) -> float:
    prompt = proxy.estimate_prompt_tokens(body)
    limit = proxy.output_limit(body)
    return (prompt * price[0] + (default_output if limit is None else limit) * price[1]) / 1_000_000


def key(name: str = "shop", **budget: float | None) -> proxy.Principal:
    return proxy.Principal(name, policy=proxy.KeyPolicy(budget=budget or None))


class Harness(PluginHarness):
    """The harness with the cost plugin under test at hand."""

    def __init__(self, clock: proxy.ManualClock | None = None, *, models: Any = None, **settings: Any) -> None:
        clock = clock or proxy.ManualClock(wall_start=JAN_1 + 3600)
        self.plugin = CostPlugin(clock=clock)
        block = {"ledger": {"enabled": False}, **settings}
        super().__init__(self.plugin, clock=clock, settings={"cost": block}, models=models)

    def reserved(self, name: str) -> float:
        return self.plugin.budgets.spent_now(name, self.clock.wall())[2]

    def spent(self, name: str) -> tuple[float, float, float]:
        return self.plugin.budgets.spent_now(name, self.clock.wall())


def refused(h: Harness, ctx: proxy.RequestContext) -> proxy.Rejection:
    with pytest.raises(proxy.Rejection) as info:
        h.admit_now(ctx)
    assert info.value.status == 429 and info.value.code == "insufficient_quota"
    return info.value


def finish(h: Harness, ctx: proxy.RequestContext, prompt: int, completion: int) -> None:
    h.attempt(ctx, usage=proxy.Usage(prompt, completion))


def actual(prompt: int, completion: int, price: tuple[float, float] = GPT41) -> float:
    return (prompt * price[0] + completion * price[1]) / 1_000_000


async def test_concurrent_requests_see_each_others_reservations():
    body = chat(max_tokens=100)
    one = max_cost(body, GPT41)
    async with Harness() as h:
        shop = key(daily_usd=3.5 * one)
        first = [h.context(body, principal=shop) for _ in range(3)]
        for ctx in first:
            h.admit_now(ctx)  # three maximum costs fit
        late = h.context(body, principal=shop)
        rejection = refused(h, late)
        assert "reserved by requests in flight" in rejection.message
        assert rejection.headers.get("retry-after") == "1" and "x-should-retry" not in rejection.headers
        assert h.metric("floodgate_cost_budget_reserved_usd", key="shop") == pytest.approx(3 * one)

        finish(h, first[0], 10, 5)  # cost far below its reservation: the difference comes back
        await h.finished(first[0])
        assert first[0].cost == pytest.approx(actual(10, 5))
        h.admit_now(h.context(body, principal=shop))
        assert h.metric("floodgate_cost_budget_reserved_usd", key="shop") == pytest.approx(3 * one)
        assert h.metric("floodgate_cost_budget_remaining_usd", key="shop", period="day") == pytest.approx(
            3.5 * one - actual(10, 5))


async def test_settlement_charges_the_actual_cost_even_above_the_reservation():
    body = chat(max_tokens=10)
    one = max_cost(body, GPT41)
    async with Harness() as h:
        shop = key(daily_usd=100 * one)
        ctx = h.context(body, principal=shop)
        h.admit_now(ctx)
        finish(h, ctx, 5000, 10)  # the prompt was far longer than estimated: charged in full
        await h.finished(ctx)
        day, month, reserved = h.spent("shop")
        assert day == month == pytest.approx(actual(5000, 10)) and reserved == 0.0


async def test_a_request_that_never_reached_an_upstream_gives_everything_back():
    body = chat(max_tokens=100)
    one = max_cost(body, GPT41)
    async with Harness() as h:
        shop = key(daily_usd=one)
        ctx = h.context(body, principal=shop)
        h.admit_now(ctx)
        refused(h, h.context(body, principal=shop))  # the whole budget is reserved
        ctx.status = 429  # e.g. refused by a later admission stage: no attempt was made
        await h.finished(ctx)
        assert ctx.cost == 0.0
        assert h.spent("shop") == (0.0, 0.0, 0.0)
        h.admit_now(h.context(body, principal=shop))

        failed = h.context(body, principal=key("bot", daily_usd=one))
        h.admit_now(failed)
        h.attempt(failed, status=503, error="http")  # the upstream answered 503: nothing billed
        await h.finished(failed)
        assert failed.cost == 0.0 and h.spent("bot") == (0.0, 0.0, 0.0)


async def test_the_reservation_uses_the_dearest_target_and_each_targets_output_limit():
    models = {name: dict(entry) for name, entry in MOCK_MODELS.items()}
    models["gpt-4.1"] = {**models["gpt-4.1"], "fallbacks": ["claude-sonnet-4.5", "deepseek-v3.2"]}
    async with Harness(models=models, default_max_tokens=50) as h:
        body = chat()  # no output limit: default_max_tokens
        ctx = h.context(body, principal=key(daily_usd=1.0))
        h.admit_now(ctx)
        assert h.reserved("shop") == pytest.approx(max_cost(body, CLAUDE, 50))

        body = chat(max_completion_tokens=7)
        h.admit_now(h.context(body, principal=key("a", daily_usd=1.0)))
        assert h.reserved("a") == pytest.approx(max_cost(body, CLAUDE))

        ctx = h.context(chat(max_tokens=500), principal=key("b", daily_usd=1.0))
        await h.route(ctx)  # a router capped the fallback's output: its own cap counts for it
        primary, claude, deepseek = ctx.route.targets
        ctx.route = proxy.Route(ctx.route.name, (primary, claude.with_overrides(max_tokens=1), deepseek))
        h.admit_now(ctx)
        prompt = proxy.estimate_prompt_tokens(ctx.body)
        expected = max(actual(prompt, 500, GPT41), actual(prompt, 1, CLAUDE), actual(prompt, 500, (0.28, 0.42)))
        assert h.reserved("b") == pytest.approx(expected)

        emb = h.context({"model": "text-embedding-3-small", "input": "a b c d"}, endpoint="embeddings",
                        principal=key("c", daily_usd=1.0))
        h.admit_now(emb)  # embeddings produce no output tokens
        assert h.reserved("c") == pytest.approx(proxy.estimate_text_tokens("a b c d") * 0.02 / 1e6)


async def test_a_request_dearer_than_what_is_left_is_refused_for_good():
    body = chat(max_tokens=1000)
    async with Harness() as h:
        rejection = refused(h, h.context(body, principal=key(daily_usd=max_cost(body, GPT41) / 2)))
        assert "may cost up to" in rejection.message and "Lower max_tokens" in rejection.message
        assert rejection.headers["x-should-retry"] == "false"
        assert h.metric("floodgate_cost_budget_rejections_total", key="shop", period="day") == 1.0
        h.admit_now(h.context(chat(max_tokens=1), principal=key(daily_usd=max_cost(body, GPT41) / 2)))


async def test_an_exhausted_budget_refuses_even_free_and_unpriced_requests():
    body = chat(max_tokens=10)
    async with Harness() as h:
        shop = key(daily_usd=0.001)
        ctx = h.context(body, principal=shop)
        h.admit_now(ctx)
        finish(h, ctx, 400, 10)  # $0.00088
        await h.finished(ctx)
        # Unpriced (passthrough): no reservation; admitted while the budget is not used up.
        files = h.context({}, endpoint="files", kind=proxy.EndpointKind.PASSTHROUGH, principal=shop)
        run_now(h.hooks.admit(files))  # passthrough is not routed
        h.attempt(files, target=proxy.Target("-", "main", "-"), usage=None)
        files.usage = None
        await h.finished(files)
        assert files.cost is None  # unknown, not zero
        assert h.metric("floodgate_cost_unpriced_total", key="shop", kind="passthrough") == 1.0
        assert h.spent("shop")[0] == pytest.approx(actual(400, 10))

        ctx = h.context(body, principal=shop)
        h.admit_now(ctx)
        finish(h, ctx, 100, 10)  # now over: $0.00108
        await h.finished(ctx)
        with pytest.raises(proxy.Rejection) as info:
            run_now(h.hooks.admit(h.context({}, endpoint="files", kind=proxy.EndpointKind.PASSTHROUGH,
                                            principal=shop)))
        rejection = info.value
        assert "used up its daily budget" in rejection.message
        assert rejection.headers["x-should-retry"] == "false" and "sk-" not in rejection.message
        refused(h, h.context(body, principal=shop))
        h.admit_now(h.context(body, principal=key("other", daily_usd=0.001)))  # other keys are not affected


async def test_per_key_budget_overrides_the_default():
    async with Harness(default_budget={"daily_usd": 0, "monthly_usd": 1000}) as h:
        refused(h, h.context(chat(), principal=key("plain")))
        h.admit_now(h.context(chat(), principal=key("vip", daily_usd=None)))  # null: unlimited
        rejection = refused(h, h.context(chat(), principal=key("capped", monthly_usd=0)))
        assert "daily budget" in rejection.message  # daily from the default (0), monthly its own
        h.admit_now(h.context(chat(), principal=proxy.Principal("admin", admin=True, policy=proxy.KeyPolicy(
            budget={"daily_usd": None, "monthly_usd": None}))))


async def test_the_day_rolls_over_when_the_clock_passes_utc_midnight_and_the_month_when_it_ends():
    clock = proxy.ManualClock(wall_start=calendar.timegm((2026, 1, 30, 23, 0, 0)))
    body = chat(max_tokens=10)
    one = max_cost(body, GPT41)
    prompt = proxy.estimate_prompt_tokens(body)
    async with Harness(clock) as h:
        async def spend(principal: proxy.Principal) -> None:
            ctx = h.context(body, principal=principal)
            h.admit_now(ctx)
            finish(h, ctx, prompt, 10)  # exactly its maximum
            await h.finished(ctx)

        daily, monthly = key(daily_usd=1.5 * one), key("m", monthly_usd=2.5 * one)
        await spend(daily)
        await spend(monthly)
        await spend(monthly)
        assert "used up" not in refused(h, h.context(body, principal=daily)).message  # one more does not fit
        refused(h, h.context(body, principal=monthly))

        await h.advance(3600.0)  # 2026-01-31T00:00Z: a new day, the same month
        in_flight = h.context(body, principal=daily)
        h.admit_now(in_flight)  # it will still be running at the next midnight
        assert "in flight" in refused(h, h.context(body, principal=daily)).message
        refused(h, h.context(body, principal=monthly))

        await h.advance(86400.0)  # 2026-02-01T00:00Z: a new day and a new month
        assert "in flight" in refused(h, h.context(body, principal=daily)).message  # its reservation counts
        h.admit_now(h.context(body, principal=monthly))
        finish(h, in_flight, prompt, 10)
        await h.finished(in_flight)  # settles in February: charged to it
        assert h.spent("shop") == pytest.approx((one, one, 0.0))
        assert h.metric("floodgate_cost_budget_remaining_usd", key="shop", period="day") == pytest.approx(0.5 * one)


class Catalogue:
    """A config whose catalogue has a model without a price (``price(name)`` is ``None``)."""

    models = {"priced": None, "free-text": None}

    def price(self, name: str, deployment: str | None = None) -> proxy.Price | None:
        return proxy.Price(input=1.0, output=2.0) if name == "priced" else None


def test_unpriced_targets_are_left_out_of_the_maximum_and_unknown_in_the_cost():
    from plugins.cost.pricing import Prices

    prices = Prices(Catalogue(), default_max_tokens=100)  # type: ignore[arg-type]
    ctx = Harness().context(chat(max_tokens=10))
    unpriced, priced = proxy.Target("free-text", "main", "x"), proxy.Target("priced", "main", "y")
    ctx.route = proxy.Route("r", (unpriced, priced))
    assert prices.maximum(ctx) == pytest.approx((proxy.estimate_prompt_tokens(ctx.body) * 1.0 + 10 * 2.0) / 1e6)
    ctx.route = proxy.Route("r", (unpriced,))
    assert prices.maximum(ctx) is None  # the unpriced rule applies
    ctx.attempts.append(proxy.AttemptRecord(unpriced, started=0.0))
    ctx.usage = proxy.Usage(10, 5)
    assert prices.cost(ctx) is None
    ctx.attempts.append(proxy.AttemptRecord(priced, started=0.0))
    assert prices.cost(ctx) == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)
