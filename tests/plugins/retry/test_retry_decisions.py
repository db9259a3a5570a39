"""The retry plugin's decisions offline: deadline, backoff, Retry-After, protocol errors and
hedging, driven through :class:`proxy.testing.PluginHarness` with a :class:`proxy.ManualClock`
(no sockets, no sleeps)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import proxy
from plugins.retry import RetryPlugin
from plugins.retry.hedge import SAVED_REQUESTS, WINDOW
from proxy.testing import MOCK_MODELS, PluginHarness, mock_config

PRIMARY, FALLBACK, THIRD = "deepseek-v3.2", "gemini-2.5-flash", "gpt-4.1"
FAST: dict[str, Any] = {"backoff_base_s": 0.01, "max_backoff_s": 0.05, "seed": 7}


def harness(settings: dict[str, Any] | None = None, *, other_upstream: str | None = None) -> PluginHarness:
    models = copy.deepcopy(MOCK_MODELS)
    models[PRIMARY]["fallbacks"] = [FALLBACK, THIRD]
    config = mock_config("http://upstream.invalid/v1", models=models,
                                       plugin_settings={"retry": {**FAST, **(settings or {})}})
    if other_upstream is not None:  # that model on a second upstream
        config["upstreams"]["other"] = {"base_url": "http://other.invalid/v1"}
        config["models"][other_upstream]["upstream"] = "other"
    clock = proxy.ManualClock()
    plugin = RetryPlugin(clock=clock)
    h = PluginHarness(plugin, config=config, clock=clock)
    h.plugin = plugin  # type: ignore[attr-defined]
    return h


async def first(h: PluginHarness, *, stream: bool = False) -> tuple[proxy.RequestContext, Any]:
    body = {"model": PRIMARY, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    ctx = await h.route(h.context(body))
    return ctx, await h.next_attempt(ctx)


async def test_timeout_and_stall_fall_back_at_once_unless_retried():
    for error in ("timeout", "stall"):
        async with harness() as h:
            ctx, attempt = await first(h)
            h.attempt(ctx, target=attempt.target, status=None, error=error, duration=5)
            nxt = await h.next_attempt(ctx)
            assert (nxt.target.model, nxt.delay) == (FALLBACK, 0.0)
        async with harness({"retry_on_timeout": True}) as h:
            ctx, attempt = await first(h)
            h.attempt(ctx, target=attempt.target, status=None, error=error, duration=5)
            assert (await h.next_attempt(ctx)).target.model == PRIMARY


async def test_retry_after_is_honoured_up_to_its_cap():
    async with harness({"max_retry_after_s": 1}) as h:
        ctx, attempt = await first(h)
        h.attempt(ctx, target=attempt.target, status=429, error="http", retry_after=0.4)
        nxt = await h.next_attempt(ctx)
        assert nxt.target.model == PRIMARY and nxt.delay >= 0.4
        h.attempt(ctx, target=nxt.target, status=429, error="http", retry_after=3)
        nxt = await h.next_attempt(ctx)  # longer than the cap: the next target, now
        assert (nxt.target.model, nxt.delay) == (FALLBACK, 0.0)


async def test_deadline_caps_attempts_and_ends_them():
    async with harness({"deadline_s": 1, "retry_on_timeout": True}) as h:
        ctx, attempt = await first(h)
        assert attempt.timeout == 1  # the upstream's own timeouts (5 s, 30 s) are longer
        await h.advance(1.0)
        h.attempt(ctx, target=attempt.target, status=None, error="timeout", duration=1.0)
        assert await h.next_attempt(ctx) is proxy.STOP


async def test_backoff_never_waits_past_the_deadline():
    async with harness({"deadline_s": 0.5, "max_retry_after_s": 5}) as h:
        ctx, attempt = await first(h)
        h.attempt(ctx, target=attempt.target, status=503, error="http", retry_after=2)
        nxt = await h.next_attempt(ctx)  # a retry would wait 2 s: fall back now instead
        assert (nxt.target.model, nxt.delay) == (FALLBACK, 0.0)


async def test_breaker_cooldown_runs_on_the_clock():
    async with harness({"max_retries": 0, "breaker": {"failures": 1, "cooldown_s": 10}}) as h:
        ctx, attempt = await first(h)
        h.attempt(ctx, target=attempt.target, status=500, error="http")
        await h.next_attempt(ctx)
        await h.finished(ctx)
        assert (await first(h))[1].target.model == FALLBACK  # open
        await h.advance(9.9)
        assert (await first(h))[1].target.model == FALLBACK
        await h.advance(0.1)
        assert (await first(h))[1].target.model == PRIMARY  # half-open: this one probes
        assert h.metric("floodgate_retry_breaker_state", model=PRIMARY) == 1


async def test_protocol_error_is_not_retried_nor_counted():
    async with harness({"breaker": {"failures": 1}}) as h:
        for _ in range(3):
            ctx, attempt = await first(h)
            assert attempt.target.model == PRIMARY  # the breaker never opened
            h.attempt(ctx, target=attempt.target, status=200, error="protocol")
            assert await h.next_attempt(ctx) is proxy.STOP  # every fallback is on the same upstream
            await h.finished(ctx)
        assert h.metric("floodgate_retry_breaker_state", model=PRIMARY) == 0
    async with harness(other_upstream=THIRD) as h:
        ctx, attempt = await first(h)
        h.attempt(ctx, target=attempt.target, status=200, error="protocol")
        assert (await h.next_attempt(ctx)).target.model == THIRD  # another upstream may answer right


# -- hedging -------------------------------------------------------------------

def served(h: PluginHarness, ctx: proxy.RequestContext, target: proxy.Target, ttfe: float) -> None:
    record = h.attempt(ctx, target=target, duration=ttfe + 0.5)
    record.first_event = record.started + ttfe
    record.committed = True


async def test_hedge_after_a_fixed_delay_to_the_next_target():
    async with harness({"hedge": {"models": [PRIMARY], "after_ms": 300, "max_ratio": 1}}) as h:
        ctx, attempt = await first(h, stream=True)
        assert attempt.hedge_after == pytest.approx(0.3)
        slow = h.attempt(ctx, target=attempt.target, status=200, error=None)
        slow.ended = 0.0  # still in flight
        hedge = await h.hooks.hedge(ctx, slow)
        assert hedge.target.model == FALLBACK
    async with harness({"hedge": {"models": [PRIMARY], "after_ms": 300, "max_ratio": 1, "to": "same"}}) as h:
        ctx, attempt = await first(h, stream=True)
        assert (await h.hooks.hedge(ctx, h.attempt(ctx, target=attempt.target))).target.model == PRIMARY


async def test_no_hedging_unless_opted_in():
    async with harness({"hedge": {"models": [FALLBACK], "after_ms": 300}}) as h:
        _, attempt = await first(h, stream=True)
        assert attempt.hedge_after is None
    async with harness({"hedge": {"routes": [PRIMARY], "after_ms": 300, "max_ratio": 1}}) as h:
        _, attempt = await first(h, stream=True)  # the catalogue model's own route
        assert attempt.hedge_after == pytest.approx(0.3)


async def test_p95_after_enough_samples_per_model_and_kind():
    async with harness({"hedge": {"models": [PRIMARY], "after_ms": "p95", "min_samples": 20,
                                  "min_after_ms": 10, "max_ratio": 1}}) as h:
        for i in range(19):
            ctx, attempt = await first(h, stream=True)
            served(h, ctx, attempt.target, 0.1 + i / 100)
            await h.finished(ctx)
        _, attempt = await first(h, stream=True)
        assert attempt.hedge_after is None  # 19 samples: not yet
        for i in range(WINDOW):
            ctx, attempt = await first(h, stream=True)
            served(h, ctx, attempt.target, 0.1 + (i % 100) / 100)  # 0.10 .. 1.09
            await h.finished(ctx)
        _, attempt = await first(h, stream=True)
        assert 1.0 <= attempt.hedge_after <= 1.09
        _, attempt = await first(h)  # non-streamed requests have their own window: none yet
        assert attempt.hedge_after is None


async def test_hedges_never_exceed_max_ratio():
    async with harness({"hedge": {"models": [PRIMARY], "after_ms": 100, "max_ratio": 0.1}}) as h:
        requests = hedges = 0
        for _ in range(200):
            ctx, attempt = await first(h, stream=True)
            requests += 1
            slow = h.attempt(ctx, target=attempt.target)
            if attempt.hedge_after is not None and await h.hooks.hedge(ctx, slow) is not None:
                hedges += 1
            assert hedges <= 0.1 * requests + 1e-9
        assert hedges == 20
    async with harness({"hedge": {"models": [PRIMARY], "after_ms": 100, "max_ratio": 0.1}}) as h:
        for _ in range(3 * SAVED_REQUESTS):  # a quiet period: everything answered in time, credit saved up...
            await first(h, stream=True)
        assert h.plugin.hedging.credits[PRIMARY] == pytest.approx(0.1 * SAVED_REQUESTS)  # ...up to a cap
        ctx, attempt = await first(h, stream=True)
        burst = [await h.hooks.hedge(ctx, h.attempt(ctx, target=attempt.target)) for _ in range(15)]
        assert sum(hedge is not None for hedge in burst) == 10
        assert h.metric("floodgate_retry_hedges_skipped_total", model=PRIMARY, reason="budget") == 5


async def test_a_lost_hedge_race_says_nothing_about_health():
    async with harness({"breaker": {"failures": 1}, "hedge": {"models": [PRIMARY], "after_ms": 100,
                                                               "max_ratio": 1}}) as h:
        ctx, attempt = await first(h, stream=True)
        loser = h.attempt(ctx, target=attempt.target, status=200, error="cancelled")
        loser.hedged = True
        hedge = await h.hooks.hedge(ctx, loser)
        winner = h.attempt(ctx, target=hedge.target)
        winner.hedged = winner.hedge = winner.committed = True
        await h.finished(ctx)
        assert h.metric("floodgate_retry_breaker_state", model=PRIMARY) == 0


def test_hedge_settings_are_checked():
    def errors(hedge: dict[str, Any]) -> dict[str, str]:
        config = mock_config("http://upstream.invalid/v1", plugin_settings={"retry": {"hedge": hedge}})
        with pytest.raises(proxy.ConfigErrors) as caught:
            PluginHarness(RetryPlugin(), config=config)
        return {e.path: e.message for e in caught.value.errors}

    found = errors({"after_ms": "p99", "max_ratio": 2, "to": "other"})
    assert set(found) == {"plugins.retry.hedge.after_ms", "plugins.retry.hedge.max_ratio", "plugins.retry.hedge.to"}
    assert "or 'p95'" in found["plugins.retry.hedge.after_ms"]
    assert set(errors({"after_ms": 0})) == {"plugins.retry.hedge.after_ms"}
    assert set(errors({"models": ["gpt-9"]})) == {"plugins.retry.hedge.models.0"}


async def test_unknown_hedge_route_fails_start_up():
    config = mock_config("http://upstream.invalid/v1", plugin_settings={"retry": {
        "hedge": {"routes": ["nowhere"]}}})
    h = PluginHarness(RetryPlugin(), config=config)
    with pytest.raises(proxy.ConfigErrors) as caught:
        await h.start()
    assert [e.path for e in caught.value.errors] == ["plugins.retry.hedge.routes.0"]
