"""bench/state_cost.py (Redis state's added CPU, in-process) run small against the real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_state_cost_drives_the_chain_on_memory_and_on_the_real_redis(tmp_path):
    """bench/state_cost.py: both backends measured, the Redis rounds on the pipe, its keys deleted."""
    out = tmp_path / "state.json"
    done = subprocess.run([sys.executable, "bench/state_cost.py", "--rounds", "2", "--requests", "200",
                           "--concurrency", "8", "--loop", "asyncio", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["memory_cpu_us_per_req"] > 0 and result["redis_cpu_us_per_req"] > 0
    assert len(result["added_per_round"]) == 2
    assert 0 < result["writes_per_req"] <= 1  # the Redis rounds wrote, and batched (not a write per call)
    assert "Redis state adds" in done.stdout
    leftover = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        assert not list(leftover.scan_iter(match="fg-bench-state-*"))
    finally:
        leftover.close()
