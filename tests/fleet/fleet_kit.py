"""Helpers of the fleet tests: "workers" as SharedStates on the machine's Redis, each test under a
key prefix of its own (deleted afterwards)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry

import proxy
from proxy.config.schema import StateSettings
from proxy.testing.processes import GatewayProcesses, RedisServer

REDIS_URL = "redis://127.0.0.1:6379/0"


class Workers:
    """``workers.state(on_error=...)``: a started SharedState on the test's prefix, as one worker's."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.states: list[proxy.SharedState] = []
        self.redis = redis.asyncio.Redis.from_url(REDIS_URL)

    async def state(self, *, workers: int = 2, url: str = REDIS_URL, **settings: Any) -> proxy.SharedState:
        state = proxy.SharedState(StateSettings(backend="redis", url=url, key_prefix=self.prefix, **settings),
                                  workers=workers, worker=len(self.states) + 1)
        state.bind_metrics(CollectorRegistry())
        await state.start()
        self.states.append(state)
        return state

    async def keys(self) -> list[str]:
        return sorted([k.decode() async for k in self.redis.scan_iter(match=f"{self.prefix}:*")])

    async def close(self) -> None:
        for state in self.states:
            await state.close()
        keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}:*")]
        if keys:
            await self.redis.delete(*keys)
        await self.redis.aclose()


@pytest.fixture(name="workers")
async def workers_fixture() -> AsyncIterator[Workers]:
    fleet = Workers(f"fg-fleet-{uuid.uuid4().hex[:10]}")
    yield fleet
    await fleet.close()


async def eventually(condition: Callable[[], Any], what: str, limit: float = 5.0) -> None:
    """Wait on real I/O (Redis) until ``condition()`` holds; ``limit`` only guards against a hang."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(name="redis_server")
async def redis_server_fixture(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.kill()


# -- gateways as real processes ---------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
#: sk-style client keys of the test config and their names (the config holds only digests).
KEYS = {"fg-fleet-shop": "shop", "fg-fleet-budget": "budgeted"}


def fleet_config(upstream: str, *, state: str = "", plugins: str = "", ledger: str = "enabled: false",
                 server: str = "") -> str:
    """A gateway config for the fleet tests: the mock catalogue at ``upstream``, two keys, the
    ``state`` section's body, extra ``plugins`` blocks (YAML indented by 2) and the ledger's settings."""
    import hashlib

    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    indent = "\n".join("  " + line for line in plugins.strip("\n").splitlines())
    ledger_block = "\n".join("      " + line for line in ledger.strip("\n").splitlines())
    return f"""
server:
  host: 127.0.0.1
  port: ${{FLOODGATE_PORT}}
  access_log: false
  log_level: info
  shutdown_timeout: 10
{server}
upstreams:
  main:
    base_url: {upstream}
    api_key: sk-upstream-test
    pool_size: 200
    timeouts: {{connect: 2, first_byte: 10, total: 30}}
models:
  gpt-4.1: {{upstream: main, price: {{input: 2.0, output: 8.0}}, fallbacks: [claude-sonnet-4.5]}}
  claude-sonnet-4.5: {{upstream: main, price: {{input: 3.0, output: 15.0}}}}
  deepseek-v3.2: {{upstream: main, price: {{input: 0.28, output: 0.42}}}}
state:
{state or "  backend: memory"}
plugins:
  disabled: [faq, router]
  auth:
    keys:
      - {{name: shop, sha256: {digest("fg-fleet-shop")}}}
      - {{name: budgeted, sha256: {digest("fg-fleet-budget")}, budget: {{daily_usd: 0.002}}}}
  cost:
    ledger:
{ledger_block}
{indent}
"""


def redis_state(url: str, prefix: str, **extra: Any) -> str:
    lines = ["  backend: redis", f"  url: {url}", f"  key_prefix: {prefix}"]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)


@pytest.fixture(name="gateways")
async def gateways_fixture(tmp_path: Path) -> AsyncIterator[GatewayProcesses]:
    """``await gateways(config_text, *serve_args)``: a started gateway process (ready)."""
    gateways = GatewayProcesses(tmp_path)
    yield gateways
    await gateways.stop_all()
