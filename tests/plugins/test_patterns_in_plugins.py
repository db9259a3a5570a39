"""Built-in plugins with catalogue patterns: settings keyed by the entry, state bounded,
client-chosen names never minting metric series of their own."""

from __future__ import annotations

import pytest

import proxy
from plugins.ratelimit import RateLimitPlugin
from plugins.retry import RetryPlugin
from plugins.router import RouterPlugin
from proxy.testing import MOCK_MODELS, PluginHarness

MODELS = {**MOCK_MODELS, "gpt-*": {"price": {"input": 1.0, "output": 2.0}}}


async def test_a_route_may_name_a_model_a_pattern_serves():
    async with PluginHarness(RouterPlugin(), models=MODELS, settings={"router": {
            "default": "new", "routes": {"new": {"model": "gpt-5", "fallbacks": ["gpt-4.1"]}}}}) as h:
        ctx = await h.route(h.context({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}))
    assert [t.model for t in ctx.route.targets] == ["gpt-5", "gpt-4.1"]
    assert ctx.route.targets[0].upstream_model == "gpt-5"


def test_a_route_naming_a_pattern_itself_is_refused():
    with pytest.raises(proxy.ConfigErrors) as info:
        PluginHarness(RouterPlugin(), models=MODELS, settings={"router": {
            "default": "new", "routes": {"new": {"model": "gpt-*"}}}})
    assert "is a pattern" in str(info.value)


async def test_a_pattern_limit_is_shared_by_the_names_it_serves():
    clock = proxy.ManualClock()
    async with PluginHarness(RateLimitPlugin(clock=clock), clock=clock, models=MODELS, settings={"ratelimit": {
            "mode": "reject", "models": {"gpt-*": {"requests_per_second": 1, "burst": 1}}}}) as h:
        h.admit_now(h.context({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}))
        with pytest.raises(proxy.Rejection) as info:
            h.admit_now(h.context({"model": "gpt-6", "messages": [{"role": "user", "content": "hi"}]}))
        assert "model 'gpt-*'" in info.value.message
        h.admit_now(h.context())  # gpt-4.1 is an exact entry: the pattern's limit is not its


async def test_breakers_are_per_model_and_bounded_with_metrics_per_pattern():
    clock = proxy.ManualClock()
    plugin = RetryPlugin(clock=clock)
    async with PluginHarness(plugin, clock=clock, models=MODELS, settings={"retry": {
            "max_retries": 0, "breaker": {"failures": 2, "failure_ratio": None}}}) as h:
        for _ in range(2):
            ctx = await h.route(h.context({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}))
            assert isinstance(await h.next_attempt(ctx), proxy.Attempt)
            h.attempt(ctx, status=503, error="http")
            await h.next_attempt(ctx)
            await h.finished(ctx)
        assert plugin.breakers["gpt-5"].state == 2  # open for gpt-5 ...
        ctx = await h.route(h.context({"model": "gpt-6", "messages": [{"role": "user", "content": "hi"}]}))
        assert isinstance(await h.next_attempt(ctx), proxy.Attempt)  # ... not for gpt-6
        assert h.metric("floodgate_retry_breaker_transitions_total", model="gpt-*", to="open") == 1
        assert h.metric("floodgate_retry_breaker_transitions_total", model="gpt-5", to="open") == 0
        for i in range(3000):  # client-chosen names: the breakers stay bounded
            plugin.health.get(h.config.target(f"gpt-x{i}"))
        assert len(plugin.breakers) <= 1024 + len(MODELS) and "gpt-5" in plugin.breakers
