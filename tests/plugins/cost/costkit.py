"""Helpers shared by the cost plugin's socket tests (imported as ``costkit``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import proxy
from plugins.cost import CostPlugin

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my parcel?"}]
# Catalogue prices (USD per million tokens) of proxy.testing.MOCK_MODELS, written out by hand.
GPT41 = {"input": 2.00, "output": 8.00, "cached_input": 0.50}
DEEPSEEK = {"input": 0.28, "output": 0.42, "cached_input": 0.028}


def by_hand(prices: Mapping[str, float], prompt: int, completion: int, cached: int = 0) -> float:
    return ((prompt - cached) * prices["input"] + cached * prices["cached_input"]
            + completion * prices["output"]) / 1_000_000


class Finished:
    """Counts finished requests (runs after the cost plugin), so tests can wait for the observers."""

    name = "test-finished"

    def __init__(self) -> None:
        self.contexts: list[proxy.RequestContext] = []

    @proxy.hookimpl(trylast=True)
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        self.contexts.append(ctx)

    async def wait(self, n: int, timeout: float = 5.0) -> None:
        await until(lambda: len(self.contexts) >= n, timeout)


class KeyAuth:
    """Test auth: ``sk-admin`` is an admin, ``sk-<name>`` is key <name> with ``budgets[name]``."""

    name = "test-auth"

    def __init__(self, budgets: dict[str, Any] | None = None) -> None:
        self.budgets = budgets if budgets is not None else {}

    @proxy.hookimpl
    def proxy_authenticate(self, ctx: proxy.RequestContext) -> proxy.Principal:
        token = ctx.headers.get("Authorization", "").removeprefix("Bearer ")
        if token == "sk-admin":
            return proxy.Principal("admin", admin=True)
        if not token.startswith("sk-"):
            raise proxy.Rejection(401, "bad key", code="invalid_api_key", should_retry=False)
        name = token[3:]
        budget = self.budgets.get(name)
        return proxy.Principal(name, policy=proxy.KeyPolicy(budget=budget))


class FaqReply:
    name = "test-faq"

    @proxy.hookimpl
    def proxy_short_circuit(self, ctx: proxy.RequestContext) -> proxy.Reply | None:
        if "opening hours" in ctx.last_user_text():
            return proxy.Reply("9 to 5.", source="faq/hours")
        return None


class TryInOrder:
    """next_attempt: the route's targets in order until one succeeds."""

    name = "test-retry"

    @proxy.hookimpl
    def proxy_next_attempt(self, ctx: proxy.RequestContext) -> proxy.Attempt | proxy.Stop:
        if ctx.route is None or (ctx.attempts and ctx.attempts[-1].ok) or len(ctx.attempts) >= len(ctx.route.targets):
            return proxy.STOP
        return proxy.Attempt(ctx.route.targets[len(ctx.attempts)])


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        with contextlib.suppress(sqlite3.OperationalError):  # table not created yet
            return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY epoch")]
    return []


async def start(floodgate: Any, tmp_path: Path, *, plugins: tuple[Any, ...] = (),
                ledger: Mapping[str, Any] | None = None,
                **settings: Any) -> tuple[Any, CostPlugin, Finished, Path]:
    db = tmp_path / "usage.db"
    plugin, finished = CostPlugin(), Finished()
    block = {"ledger": {"path": str(db), **(ledger or {})}, **settings}
    gw = await floodgate(plugins=[plugin, *plugins, finished], plugin_settings={"cost": block},
                         aliases={"cheap": "deepseek-v3.2"})
    return gw, plugin, finished, db


async def ledger_rows(plugin: CostPlugin, db: Path) -> list[dict[str, Any]]:
    assert plugin.ledger is not None
    await plugin.ledger.flush()
    return read_rows(db)


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return None


def usage_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="floodgate")
    sub = parser.add_subparsers(dest="command")
    CostPlugin().proxy_add_commands(subparsers=sub)
    args = parser.parse_args(["usage", *argv])
    return args.func(args)


def cost_config(tmp_path: Path, ledger: str, extra: str = "") -> Path:
    """A config file whose ``plugins.cost.ledger`` is ``ledger`` (a YAML flow mapping); ``extra``
    lines go under ``plugins.cost``."""
    path = tmp_path / "floodgate.yaml"
    path.write_text(f"""
upstreams:
  main: {{base_url: "http://127.0.0.1:9"}}
plugins:
  cost:
    ledger: {ledger}
{extra}""")
    return path
