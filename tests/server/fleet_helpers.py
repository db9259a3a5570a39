"""Gateways as real processes (``floodgate serve``, with or without workers) for the e2e tests here.

Each runs on a free loopback port with its own ledger, Redis key prefix, pid file
and log file, and is stopped by pid when the test ends (workers included).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from proxy.testing.processes import GatewayProcesses

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "config.yaml").read_text(encoding="utf-8")
DEMO_KEY = {"Authorization": "Bearer fg-demo-key"}
HOURS = "我们的在线客服每天 9:00-22:00 为您服务,大促期间延长至 24:00。"


def gateway_config(*, prefix: str | None = None, answer: str = HOURS, pid_file: Path | None = None,
                   tokens_per_second: int = 80, completion_tokens: int = 24, extra: str = "") -> str:
    """The shipped config with the opening-hours answer, mock pacing, pid file and state set.

    The rate limiter and the ledger are off: these tests measure what reloads and workers
    do to requests; per-process buckets would 429, and several workers opening one
    SQLite ledger at once race (both are other engineers' part of the fleet work).
    """
    text = SHIPPED.replace(HOURS, answer)
    text = text.replace("tokens_per_second: 80", f"tokens_per_second: {tokens_per_second}")
    text = text.replace("completion_tokens: 24", f"completion_tokens: {completion_tokens}")
    text = text.replace("  # disabled: [faq]             # block a plugin by name", "  disabled: [ratelimit]")
    ledger = "      enabled: {}\n      path: ${{FLOODGATE_LEDGER"
    text = text.replace(ledger.format("true"), ledger.format("false"))
    if pid_file is not None:
        text = text.replace("  log_level: info\n", f"  log_level: info\n  pid_file: {pid_file}\n")
    if prefix is not None:
        text = text.replace("${FLOODGATE_STATE:-memory}", "redis").replace(
            "key_prefix: floodgate ", f"key_prefix: {prefix} ")
    return text + extra


@pytest.fixture
async def redis_prefix(gateway: GatewayProcesses) -> AsyncIterator[str]:
    """A key prefix of its own on the machine's Redis; its keys are deleted afterwards (once the
    test's gateways have stopped: a shutdown still writes what is due)."""
    prefix = f"fg-e2e-{uuid.uuid4().hex[:10]}"
    yield prefix
    await gateway.stop_all()
    client = redis.asyncio.Redis()
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayProcesses]:
    """``await gateway(config_text, *serve_args)``: a started gateway process."""
    gateways = GatewayProcesses(tmp_path, {"FLOODGATE_LEDGER": str(tmp_path / "usage.db")}, one_config=True)
    yield gateways
    await gateways.stop_all()
