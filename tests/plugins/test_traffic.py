"""The traffic meter (plugins/traffic.py) on a manual clock: requests per second, in flight and cost per
minute per route and per deployment, bounded by the config."""

from __future__ import annotations

import proxy
from plugins.traffic import Meter, TrafficPlugin
from proxy.testing import PluginHarness


def test_a_meter_rates_the_last_seconds_and_costs_the_last_minute() -> None:
    meter = Meter()
    for second in range(100, 130):  # 30 s at 2 requests/s, 0.01 $ each
        meter.add(second + 0.5, 1, 0.01)
        meter.add(second + 0.7, 1, 0.01)
    assert meter.rate(130.0, 10) == 2.0 and meter.rate(135.0, 10) == 1.0
    assert round(meter.cost_per_minute(130.0), 6) == 0.6
    assert round(meter.cost_per_minute(170.0), 6) == 0.38  # seconds 111-129 are within the last minute
    assert len(meter.buckets) <= 60


async def test_routes_and_deployments_are_metered() -> None:
    clock = proxy.ManualClock(start=500.0)
    plugin = TrafficPlugin(clock=clock)
    models = {"deepseek-v3.2": {"deployments": [{"upstream": "main", "name": "a"}, {"upstream": "main", "name": "b"}]},
              "gpt-*": {"price": None}}
    async with PluginHarness(plugin, clock=clock, models=models, settings={"traffic": {"window_s": 5}}) as h:
        waiting = []
        for i in range(10):
            ctx = await h.route(h.context({"model": "deepseek-v3.2" if i % 2 else "gpt-5",
                                           "messages": [{"role": "user", "content": "hi"}]}))
            await h.hooks.admit(ctx)
            waiting.append(ctx)
        assert plugin.routes["deepseek-v3.2"].in_flight == 5 and plugin.routes["gpt-*"].in_flight == 5
        for ctx in waiting:
            h.attempt(ctx)
            ctx.attempts[-1].committed = True
            ctx.cost = 0.5
            await h.finished(ctx)
        await h.advance(1.0)
        status = plugin.proxy_status()
        assert status["routes"]["deepseek-v3.2"] == {"requests_per_s": 1.0, "in_flight": 0, "cost_per_min_usd": 2.5}
        assert status["routes"]["gpt-*"]["requests_per_s"] == 1.0  # names a pattern serves: under the pattern
        assert status["deployments"]["deepseek-v3.2@a"]["requests_per_s"] == 1.0
        assert status["gateway"]["requests_per_s"] == 2.0 and status["gateway"]["cost_per_min_usd"] == 5.0
