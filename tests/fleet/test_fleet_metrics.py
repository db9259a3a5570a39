"""The plugins' gauges with worker processes: each says how workers combine, and they are visible
in the host-wide ``/metrics`` (prometheus-client's multiprocess mode has no callback gauges)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import Gauge

from plugins.cost import CostPlugin
from plugins.degrade import DegradePlugin
from plugins.ratelimit import RateLimitPlugin
from plugins.retry import RetryPlugin
from proxy.testing import PluginHarness

ROOT = Path(__file__).resolve().parents[2]


def test_every_plugin_gauge_says_how_workers_combine():
    h = PluginHarness(RateLimitPlugin(), RetryPlugin(), CostPlugin(), DegradePlugin(),
                      settings={"cost": {"ledger": {"path": ":memory:"}}})
    gauges = {c._name: c._multiprocess_mode for c in h.registry._collector_to_names if isinstance(c, Gauge)}
    assert gauges == {
        "floodgate_state_degraded": "livemax",
        "floodgate_ratelimit_queue_length": "livesum",
        "floodgate_retry_breaker_state": "livemax",
        "floodgate_cost_budget_remaining_usd": "livemostrecent",
        "floodgate_cost_budget_reserved_usd": "livemostrecent",
        "floodgate_cost_ledger_pending_rows": "livesum",
        "floodgate_ratelimit_deployment_in_flight": "livesum",
        "floodgate_ratelimit_deployment_limit": "livemin",
        "floodgate_degrade_steps_in_force": "livemax",
    }


SCRIPT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, sys.argv[1])
    from plugins.cost import CostPlugin
    from proxy.metrics import exposition
    from proxy.testing import PluginHarness

    async def main():
        h = PluginHarness(CostPlugin(), settings={"cost": {"ledger": {"path": ":memory:", "flush_interval_s": 60}}})
        await h.start()
        for _ in range(3):
            ctx = h.context()
            await h.admit(ctx)
            h.attempt(ctx)
            await h.finished(ctx)
        print(exposition(h.registry).decode())
        await h.stop()
        print(exposition(h.registry).decode())

    asyncio.run(main())
""")


@pytest.mark.e2e
def test_ledger_pending_rows_are_seen_by_a_host_wide_metrics(tmp_path):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    running, stopped = out.split("# HELP floodgate_cost_ledger_pending_rows", 2)[1:]
    assert "floodgate_cost_ledger_pending_rows 3.0" in running  # three rows waiting for the next flush
    assert "floodgate_cost_ledger_pending_rows 0.0" in stopped  # stored at shutdown
