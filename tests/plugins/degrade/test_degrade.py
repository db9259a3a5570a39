"""The overload ladder (plugins/degrade/) on a manual clock: steps in declared order while a route is
short, hysteresis, opted-out keys, the FAQ's looser matches, and its settings.

The route's capacity is a plugin of the test's (``proxy_predicted_wait``), so every reading is exact.
"""

from __future__ import annotations

from typing import Any

import pytest

import proxy
from plugins.degrade import DegradePlugin
from plugins.faq import FaqPlugin
from proxy.testing import PluginHarness

EXPENSIVE, CHEAP = "gpt-4.1", "gemini-2.5-flash"
LADDER = {"threshold_ms": 250, "recover_ms": 50, "hold_s": 5, "escalate_s": 0.5, "steps": [
    {"faq": True}, {"name": "cheaper", "route": CHEAP}, {"name": "short", "max_tokens": 64},
    {"name": "shed", "shed_below_priority": 5, "retry_after_s": 3}, {"reject": True}]}
FAQ = {"rules": [{"name": "refund-time", "any": ["退款多久"], "max_length": 20, "answer": "1-3 个工作日到账。"}]}
PLAIN = "帮我看看这个订单现在到哪里了"
LOOSE_FAQ = "你好,我上周退的那件外套,退款多久能到账?订单号 20241105-88231"  # longer than max_length


class Capacity:
    """The route's predicted waits, set by the test."""

    name = "capacity"

    def __init__(self) -> None:
        self.waits: dict[str, float] = {}

    @proxy.hookimpl
    def proxy_predicted_wait(self, ctx: proxy.RequestContext, route: proxy.Route) -> float | None:
        return self.waits.get(route.name)


class Ladder:
    def __init__(self, h: PluginHarness, plugin: DegradePlugin, capacity: Capacity) -> None:
        self.h, self.plugin, self.capacity = h, plugin, capacity

    def request(self, text: str = PLAIN, *, priority: int = 0, degrade: bool = True,
                **fields: Any) -> proxy.RequestContext:
        principal = proxy.Principal(f"key-p{priority}{'' if degrade else '-vip'}",
                                    proxy.KeyPolicy(priority=priority, degrade=degrade))
        return self.h.context({"model": EXPENSIVE, "messages": [{"role": "user", "content": text}], **fields},
                              principal=principal)

    async def send(self, text: str = PLAIN, **kw: Any) -> proxy.RequestContext:
        """Through short-circuit and admission, as the gateway would; a refusal is kept in ``ctx.state``."""
        ctx = self.request(text, **kw)
        ctx.reply = await self.h.hooks.short_circuit(ctx)
        if ctx.reply is None:
            try:
                await self.h.admit(ctx)
            except proxy.Rejection as refused:
                ctx.state["refused"] = refused
        await self.h.finished(ctx)
        return ctx

    def in_force(self) -> list[str]:
        return [step.label for step in self.plugin.ladders[EXPENSIVE].in_force]

    def metric(self, name: str, **labels: str) -> float:
        return self.h.metric(name, **labels)


@pytest.fixture
async def ladder():
    started = []

    async def make(block: dict[str, Any] | None = None) -> Ladder:
        clock = proxy.ManualClock()
        plugin, capacity = DegradePlugin(clock=clock), Capacity()
        h = PluginHarness(plugin, FaqPlugin(), capacity, clock=clock,
                          settings={"degrade": block or {"routes": {EXPENSIVE: LADDER}}, "faq": FAQ})
        await h.start()
        started.append(h)
        return Ladder(h, plugin, capacity)

    yield make
    for h in started:
        await h.stop()


async def test_steps_come_into_force_in_order_while_nothing_absorbs_the_excess(ladder) -> None:
    lad = await ladder()
    lad.capacity.waits = {EXPENSIVE: 0.1, CHEAP: 1.0}
    ctx = await lad.send()
    assert ctx.degraded == [] and lad.in_force() == []  # waits under the threshold: nothing happens
    lad.capacity.waits[EXPENSIVE] = 1.0
    ctx = await lad.send()  # short, nothing in force: the first step comes into force...
    assert lad.in_force() == ["faq"] and ctx.degraded == []  # ... too late for this one (FAQ comes first)
    ctx = await lad.send(LOOSE_FAQ)
    assert ctx.reply is not None and ctx.reply.source == "faq/refund-time" and ctx.degraded == ["faq"]
    ctx = await lad.send()  # no FAQ answers it, and the next step may come only after escalate_s
    assert lad.in_force() == ["faq"] and ctx.degraded == []
    await lad.h.advance(0.5)
    ctx = await lad.send()  # "cheaper" comes in, but the cheap route is short too: it cannot absorb it
    assert lad.in_force() == ["faq", "cheaper"] and ctx.degraded == [] and ctx.route.name == EXPENSIVE
    lad.capacity.waits[CHEAP] = 0.0
    ctx = await lad.send()
    assert ctx.degraded == ["cheaper"] and ctx.route.name == CHEAP and ctx.route.targets[0].model == CHEAP
    lad.capacity.waits[CHEAP] = 1.0
    await lad.h.advance(0.5)
    ctx = await lad.send(max_tokens=500)
    assert lad.in_force() == ["faq", "cheaper", "short"] and ctx.degraded == ["short"]
    assert ctx.route.targets[0].overrides["max_tokens"] == 64  # the field the client used, capped
    await lad.h.advance(0.5)
    ctx = await lad.send(priority=0)
    refused = ctx.state["refused"]
    assert ctx.degraded == ["short", "shed"] and (refused.status, refused.code) == (429, "overloaded")
    assert refused.headers["retry-after"] == "3"
    ctx = await lad.send(priority=10)  # shed spares higher priorities; reject is next, not yet in force
    assert ctx.degraded == ["short"] and "refused" not in ctx.state
    await lad.h.advance(0.5)
    ctx = await lad.send(priority=10)
    assert ctx.degraded == ["short", "reject"] and ctx.state["refused"].status == 429
    assert lad.in_force() == ["faq", "cheaper", "short", "shed", "reject"]
    for step in ("faq", "cheaper", "short", "shed", "reject"):
        assert lad.metric("floodgate_degrade_transitions_total", route=EXPENSIVE, step=step, to="on") == 1
    assert lad.metric("floodgate_degrade_requests_total", route=EXPENSIVE, step="short") == 4
    assert lad.metric("floodgate_degrade_requests_total", route=EXPENSIVE, step="faq") == 1
    assert lad.metric("floodgate_degrade_steps_in_force", route=EXPENSIVE) == 5


async def test_steps_come_off_one_at_a_time_once_capacity_is_back(ladder) -> None:
    lad = await ladder({"routes": {EXPENSIVE: {**LADDER, "escalate_s": 0}}})
    lad.capacity.waits = {EXPENSIVE: 1.0, CHEAP: 1.0}
    ctx = await lad.send(priority=10)  # escalate_s 0: every step at once, until one absorbs it: reject
    assert lad.in_force() == ["faq", "cheaper", "short", "shed", "reject"] and ctx.state["refused"].status == 429
    lad.capacity.waits[EXPENSIVE] = 0.1  # between recover and threshold: not short, not recovered
    await lad.h.advance(4.0)
    assert (await lad.send()).degraded == []  # not short: nothing applies
    await lad.h.advance(4.0)
    await lad.send()
    assert len(lad.in_force()) == 5  # the last waits above recover_ms kept every step
    lad.capacity.waits[EXPENSIVE] = 0.01
    await lad.send()
    levels = []
    for _ in range(6):
        await lad.h.advance(5.0)
        await lad.send()
        levels.append(len(lad.in_force()))
    assert levels == [4, 3, 2, 1, 0, 0]  # the last first, one per hold_s
    assert lad.metric("floodgate_degrade_transitions_total", route=EXPENSIVE, step="faq", to="off") == 1
    assert lad.metric("floodgate_degrade_steps_in_force", route=EXPENSIVE) == 0


async def test_an_idle_route_sheds_its_steps_on_time(ladder) -> None:
    lad = await ladder({"routes": {EXPENSIVE: {**LADDER, "escalate_s": 0}}})
    lad.capacity.waits = {EXPENSIVE: 1.0, CHEAP: 1.0}
    await lad.send(priority=10)
    assert len(lad.in_force()) == 5
    await lad.h.advance(12.0)  # no request at all: a status report catches up
    status = lad.plugin.proxy_status()
    assert status["routes"][EXPENSIVE]["steps_in_force"] == ["faq", "cheaper", "short"]
    assert status["routes"][EXPENSIVE]["degraded"] == "short"
    await lad.h.advance(60.0)
    assert lad.plugin.proxy_status()["routes"][EXPENSIVE]["degraded"] is None


async def test_an_opted_out_key_is_never_degraded(ladder) -> None:
    lad = await ladder({"routes": {EXPENSIVE: {**LADDER, "escalate_s": 0}}})
    lad.capacity.waits = {EXPENSIVE: 1.0, CHEAP: 0.0}
    await lad.send(priority=10)
    assert len(lad.in_force()) == 2  # cheaper absorbed it
    for text in (PLAIN, LOOSE_FAQ):
        ctx = await lad.send(text, priority=0, degrade=False, max_tokens=4000)
        assert ctx.degraded == [] and ctx.reply is None and "refused" not in ctx.state
        assert ctx.route.name == EXPENSIVE and ctx.route.targets[0].overrides.get("max_tokens") is None
    assert (await lad.send("退款多久", degrade=False)).reply is not None  # a strict FAQ match is no downgrade


async def test_a_strict_faq_match_is_not_a_degraded_answer(ladder) -> None:
    lad = await ladder()
    lad.capacity.waits = {EXPENSIVE: 1.0}
    await lad.send()
    assert lad.in_force() == ["faq"]
    ctx = await lad.send("退款多久?")
    assert ctx.reply is not None and ctx.degraded == [] and ctx.relax == "faq"


async def test_no_forecast_means_no_degradation(ladder) -> None:
    lad = await ladder()  # the capacity plugin knows no route: nobody limits anything
    for _ in range(3):
        assert (await lad.send()).degraded == []
    assert lad.in_force() == []


@pytest.mark.parametrize(("block", "message"), [
    ({"routes": {EXPENSIVE: {"steps": []}}}, "at least 1 item"),
    ({"routes": {EXPENSIVE: {"steps": [{"faq": True, "reject": True}]}}}, "exactly one action"),
    ({"routes": {EXPENSIVE: {"steps": [{"name": "x y", "reject": True}]}}}, "ASCII letters"),
    ({"routes": {EXPENSIVE: {"recover_ms": 300, "steps": [{"reject": True}]}}}, "must be below threshold_ms"),
    ({"routes": {EXPENSIVE: {"steps": [{"reject": True}, {"reject": True}]}}}, "already called 'reject'"),
    ({"routes": {EXPENSIVE: {"steps": [{"rejekt": True}]}}}, "unknown key"),
])
def test_bad_ladders_are_refused_with_their_path(block: dict[str, Any], message: str) -> None:
    with pytest.raises(proxy.ConfigErrors) as info:
        PluginHarness(DegradePlugin(), settings={"degrade": block})
    assert message in str(info.value) and "plugins.degrade.routes" in str(info.value)


@pytest.mark.parametrize(("route", "step_route"), [("nope", CHEAP), (EXPENSIVE, "nowhere"), (EXPENSIVE, EXPENSIVE)])
async def test_unknown_routes_are_refused_at_start_up(route: str, step_route: str) -> None:
    h = PluginHarness(DegradePlugin(), settings={"degrade": {"routes": {route: {"steps": [{"route": step_route}]}}}})
    with pytest.raises(proxy.ConfigErrors) as info:
        await h.start()
    assert "plugins.degrade.routes" in str(info.value)
