"""The ledger records which deployment served and which overload step degraded a request: columns
migrated in place (SQLite and PostgreSQL), journals of the previous row shape still read, prices per
deployment, ``floodgate usage --by deployment`` / ``--by degraded``."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from conftest import PG_DSN, old_table

import proxy
from plugins.cost import CostPlugin
from plugins.cost.ledger import Ledger
from plugins.cost.ledger.postgres import PostgresBackend
from plugins.cost.ledger.sqlite import SQLiteBackend
from plugins.cost.rows import Row, decode
from proxy.testing import PluginHarness, mock_config

#: The ledger's table as it was before deployments and degradation (``hedged`` the newest column).
PREVIOUS_SCHEMA = """
CREATE TABLE usage (row_id TEXT, request_id TEXT NOT NULL, ts TEXT NOT NULL, epoch REAL NOT NULL, key TEXT NOT NULL,
    requested_model TEXT, model TEXT, route TEXT, attempts INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, estimated INTEGER NOT NULL,
    cost_usd REAL NOT NULL, status INTEGER NOT NULL, latency_ms REAL NOT NULL, endpoint TEXT NOT NULL,
    short_circuit TEXT, kind TEXT, method TEXT, request_bytes INTEGER NOT NULL DEFAULT 0,
    response_bytes INTEGER NOT NULL DEFAULT 0, unpriced INTEGER NOT NULL DEFAULT 0,
    hedged INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX usage_row_id ON usage (row_id);
INSERT INTO usage VALUES ('old-1', 'req-old', '2026-01-01T00:00:00.000Z', 1767225600, 'shop', 'deepseek-v3.2',
    'deepseek-v3.2', 'simple', 1, 10, 5, 0, 0, 0.5, 200, 1.0, 'chat/completions', NULL, 'model', 'POST', 10, 20, 0, 0);
"""


def row(n: int, deployment: str | None, degraded: str | None, cost: float = 0.25) -> Row:
    return Row(f"row-{n}", f"req-{n}", time.time(), "shop", "deepseek-v3.2", "deepseek-v3.2", "simple", 1, 100, 10,
               0, False, cost, 200, 5.0, "chat/completions", None, "model", "POST", 50, 500, False,
               deployment=deployment, degraded=degraded)


async def migrated_and_grouped(ledger: Ledger) -> tuple[dict[str, Any], dict[str, Any]]:
    await ledger.open()
    ledger.append(row(1, "key-a", None))
    ledger.append(row(2, "key-b", "cheaper"))
    ledger.append(row(3, "key-b", "short, shed", cost=0.0))
    by_deployment = await ledger.report(since=None, by="deployment")
    by_step = await ledger.report(since=None, by="degraded")
    await ledger.close()
    return by_deployment, by_step


def groups(report: dict[str, Any]) -> dict[str, tuple[int, float]]:
    return {g["group"]: (g["requests"], g["cost_usd"]) for g in report["groups"]}


async def test_a_sqlite_ledger_gains_the_columns_in_place(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executescript(PREVIOUS_SCHEMA)
    by_deployment, by_step = await migrated_and_grouped(Ledger(SQLiteBackend(str(db)), str(tmp_path / "journal")))
    assert groups(by_deployment) == {"deepseek-v3.2": (1, 0.5), "deepseek-v3.2@key-a": (1, 0.25),
                                     "deepseek-v3.2@key-b": (2, 0.25)}
    assert groups(by_step) == {"-": (2, 0.75), "cheaper": (1, 0.25), "short, shed": (1, 0.0)}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        stored = dict(conn.execute("SELECT row_id, deployment FROM usage"))
    assert stored == {"old-1": None, "row-1": "key-a", "row-2": "key-b", "row-3": "key-b"}


async def test_a_postgresql_ledger_gains_the_columns_in_place(pg_schema: str, tmp_path: Path) -> None:
    await old_table(pg_schema, PREVIOUS_SCHEMA)
    by_deployment, by_step = await migrated_and_grouped(Ledger(PostgresBackend(PG_DSN, pg_schema), None))
    assert groups(by_deployment)["deepseek-v3.2@key-b"] == (2, 0.25)
    assert groups(by_step)["cheaper"] == (1, 0.25)


def test_a_journal_line_of_the_previous_row_shape_is_still_read() -> None:
    line = (b'["r1","q1",1767225600.0,"shop","m","m","m",1,1,1,0,false,0.0,200,1.0,"chat/completions",null,'
            b'"model","POST",0,0,false,false]\n')
    old = decode(line)
    assert (old.hedged, old.deployment, old.degraded) == (False, None, None)


async def test_rows_name_the_deployment_priced_at_its_own_price(tmp_path: Path) -> None:
    config = mock_config("http://upstream.invalid/v1", models={"deepseek-v3.2": {
        "price": {"input": 1.0, "output": 1.0},
        "deployments": [{"upstream": "main"}, {"upstream": "second", "price": {"input": 2.0, "output": 2.0}}]}},
        plugin_settings={"cost": {"ledger": {"path": str(tmp_path / "usage.db")}}})
    config["upstreams"]["second"] = {"base_url": "http://second.invalid/v1"}
    plugin = CostPlugin()
    async with PluginHarness(plugin, config=config) as h:
        costs = {}
        for target in h.config.deployments("deepseek-v3.2"):
            ctx = await h.route(h.context({"model": "deepseek-v3.2", "messages": [{"role": "user", "content": "hi"}]}))
            h.attempt(ctx, target=target, usage=proxy.Usage(1_000_000, 0))
            ctx.attempts[-1].committed = True
            ctx.degraded.append("cheaper")
            await h.finished(ctx)
            costs[target.deployment] = ctx.cost
        assert costs == {"main": 1.0, "second": 2.0}
        await plugin.ledger.flush()
    with contextlib.closing(sqlite3.connect(tmp_path / "usage.db")) as conn:
        stored = sorted(conn.execute("SELECT deployment, degraded, cost_usd FROM usage"))
    assert stored == [("main", "cheaper", 1.0), ("second", "cheaper", 2.0)]
