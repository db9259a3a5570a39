"""The usage ledger: journal, adoption of orphans, SQLite migration, PostgreSQL, budgets reloaded."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import PG_DSN, old_table
from costkit import cost_config, usage_cli

import proxy
from plugins.cost import CostPlugin
from plugins.cost.ledger import Ledger
from plugins.cost.ledger.journal import Journal
from plugins.cost.ledger.postgres import LedgerDatabaseError, PostgresBackend, redact
from plugins.cost.ledger.sqlite import SQLiteBackend
from plugins.cost.rows import Row, encode
from proxy.config import config_from_dict
from proxy.testing import PluginHarness

JAN_1 = calendar.timegm((2026, 1, 1, 0, 0, 0))


def row(n: int, *, key: str = "shop", cost: float = 0.001, epoch: float | None = None, rid: str | None = None) -> Row:
    return Row(rid or f"row-{n}", f"req-{n}", time.time() if epoch is None else epoch, key, "gpt-4.1", "gpt-4.1",
               "gpt-4.1", 1, 100, 10, 0, False, cost, 200, 5.0, "chat/completions", None, "model", "POST", 50, 500,
               False)


def stored(db: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY row_id")]


def journals(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.jsonl")) if directory.exists() else []


def orphan(directory: Path, rows: list[Row], extra: bytes = b"") -> Path:
    """A journal left by a process that died: unlocked, its rows never stored."""
    directory.mkdir(exist_ok=True)
    path = directory / f"journal-deadhost-{os.urandom(3).hex()}-000000.jsonl"
    path.write_bytes(b"".join(encode(r) for r in rows) + extra)
    return path


def sqlite_ledger(tmp_path: Path, **options: Any) -> Ledger:
    return Ledger(SQLiteBackend(str(tmp_path / "usage.db")), str(tmp_path / "journal"), **options)


async def test_rows_are_journaled_at_once_and_the_journal_removed_once_they_are_stored(tmp_path):
    ledger = sqlite_ledger(tmp_path, flush_interval=60)
    await ledger.open()
    for n in range(3):
        ledger.append(row(n))
    [journal] = journals(tmp_path / "journal")
    assert [line.count(b'"row-') for line in journal.read_bytes().splitlines()] == [1, 1, 1]  # on disk already
    assert stored(tmp_path / "usage.db") == []
    await ledger.flush()
    assert [r["row_id"] for r in stored(tmp_path / "usage.db")] == ["row-0", "row-1", "row-2"]
    assert not journal.exists()
    [fresh] = journals(tmp_path / "journal")  # the next rows go to a new file
    ledger.append(row(3))
    assert fresh.read_bytes().count(b"\n") == 1
    await ledger.close()
    assert journals(tmp_path / "journal") == [] and len(stored(tmp_path / "usage.db")) == 4


async def test_orphaned_journals_are_stored_once_and_live_ones_left_alone(tmp_path, caplog):
    directory = tmp_path / "journal"
    dead = orphan(directory, [row(1), row(2)], extra=b'["torn", 1, 2\n')  # a write cut by a machine crash
    replayed = orphan(directory, [row(2), row(3)])  # row-2 twice: stored once
    live = orphan(directory, [row(9)])
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # its owner is alive
    try:
        ledger = sqlite_ledger(tmp_path)
        assert await ledger.open() == 4
        assert [r["row_id"] for r in stored(tmp_path / "usage.db")] == ["row-1", "row-2", "row-3"]
        assert not dead.exists() and not replayed.exists() and live.exists()
        assert any("1 unreadable line" in r.getMessage() for r in caplog.records)
        await ledger.close()
    finally:
        os.close(fd)
    ledger = sqlite_ledger(tmp_path)  # its owner died: the next start takes it
    assert await ledger.open() == 1
    await ledger.close()
    assert [r["row_id"] for r in stored(tmp_path / "usage.db")] == ["row-1", "row-2", "row-3", "row-9"]


async def test_a_failing_database_keeps_every_row_and_retries(tmp_path, monkeypatch):
    ledger = sqlite_ledger(tmp_path, flush_interval=60)
    await ledger.open()
    real = ledger.backend.write
    calls = 0

    async def down(rows: list[Row]) -> None:
        nonlocal calls
        calls += 1
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ledger.backend, "write", down)
    ledger.append(row(1))
    await ledger.flush()
    ledger.append(row(2))
    await ledger.flush()
    assert calls == 2 and ledger.pending == 2 and len(journals(tmp_path / "journal")) == 3  # 2 sealed + current
    monkeypatch.setattr(ledger.backend, "write", real)
    await ledger.flush()
    assert ledger.pending == 0 and [r["row_id"] for r in stored(tmp_path / "usage.db")] == ["row-1", "row-2"]
    await ledger.close()


async def test_a_row_finishing_after_close_is_left_for_the_next_start(tmp_path):
    ledger = sqlite_ledger(tmp_path)
    await ledger.open()
    await ledger.close()
    ledger.append(row(7))
    assert len(journals(tmp_path / "journal")) == 1
    ledger = sqlite_ledger(tmp_path)
    assert await ledger.open() == 1
    await ledger.close()
    assert [r["row_id"] for r in stored(tmp_path / "usage.db")] == ["row-7"]


OLD_SCHEMA = """
CREATE TABLE usage (request_id TEXT NOT NULL, ts TEXT NOT NULL, epoch REAL NOT NULL, key TEXT NOT NULL,
    requested_model TEXT, model TEXT, route TEXT, attempts INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, estimated INTEGER NOT NULL,
    cost_usd REAL NOT NULL, status INTEGER NOT NULL, latency_ms REAL NOT NULL, endpoint TEXT NOT NULL,
    short_circuit TEXT);
CREATE INDEX usage_epoch ON usage (epoch);
INSERT INTO usage VALUES ('old-1', '2026-01-01T00:00:00.000Z', 1767225600, 'shop', 'gpt-4.1', 'gpt-4.1',
    'gpt-4.1', 1, 10, 5, 0, 0, 0.5, 200, 1.0, 'chat/completions', NULL);
"""


async def test_a_ledger_file_of_the_first_schema_is_migrated_in_place(tmp_path):
    db = tmp_path / "usage.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executescript(OLD_SCHEMA)
    ledger = sqlite_ledger(tmp_path)
    await ledger.open()
    ledger.append(row(1, cost=0.25))
    report = await ledger.report(since=None, by="kind")
    await ledger.close()
    old, new = sorted(stored(db), key=lambda r: r["epoch"])
    assert (old["request_id"], old["row_id"], old["unpriced"], old["request_bytes"]) == ("old-1", None, 0, 0)
    assert (new["row_id"], new["kind"], new["method"], new["response_bytes"]) == ("row-1", "model", "POST", 500)
    assert report["groups"] == [{"group": "model", "requests": 2, "prompt_tokens": 110, "completion_tokens": 15,
                                 "cached_tokens": 0, "cost_usd": 0.75, "estimated": 0, "unpriced": 0,
                                 "request_bytes": 50, "response_bytes": 500}]


async def test_budgets_reload_spending_from_the_ledger_and_its_journal_leftovers(tmp_path):
    db = tmp_path / "usage.db"
    ledger = sqlite_ledger(tmp_path)
    await ledger.open()
    ledger.append(row(1, cost=0.25, epoch=JAN_1 + 60))
    ledger.append(row(2, cost=4.0, epoch=JAN_1 - 86400))  # last year: counts for nothing now
    await ledger.close()
    orphan(tmp_path / "journal", [row(3, cost=0.5, epoch=JAN_1 + 120)])  # a worker killed before storing it

    clock = proxy.ManualClock(wall_start=JAN_1 + 3600)
    plugin = CostPlugin(clock=clock)
    settings = {"cost": {"ledger": {"path": str(db), "journal_dir": str(tmp_path / "journal")}}}
    async with PluginHarness(plugin, clock=clock, settings=settings):
        assert plugin.budgets.spent_now("shop", clock.wall()) == (0.75, 0.75, 0.0)
        assert len(stored(db)) == 3


# -- PostgreSQL -------------------------------------------------------------------------------

async def test_postgresql_ledger_stores_idempotently_and_summarises(pg_schema, tmp_path):
    ledger = Ledger(PostgresBackend(PG_DSN, pg_schema), str(tmp_path / "journal"), flush_interval=60)
    orphan(tmp_path / "journal", [row(1, cost=0.5), row(2, key="bot", cost=0.125)])
    assert await ledger.open() == 2
    ledger.append(row(3, cost=0.25))
    ledger.append(row(1, cost=0.5))  # a replayed row: skipped
    report = await ledger.report(since=time.time() - 3600, by="key")
    assert [(g["group"], g["requests"], g["cost_usd"]) for g in report["groups"]] == [("shop", 2, 0.75),
                                                                                     ("bot", 1, 0.125)]
    assert report["total"]["response_bytes"] == 1500
    day = time.time() - 600
    assert await ledger.spent(day - 86400, day) == {"shop": (0.75, 0.75), "bot": (0.125, 0.125)}
    await ledger.close()
    conn = await asyncpg.connect(PG_DSN)
    try:
        count = await conn.fetchval(f'SELECT COUNT(*) FROM "{pg_schema}".usage')
        columns = {r[0] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1", pg_schema)}
    finally:
        await conn.close()
    assert count == 3 and {"row_id", "unpriced", "request_bytes", "method", "kind"} <= columns


async def test_postgresql_tables_of_the_first_schema_are_migrated(pg_schema, tmp_path):
    await old_table(pg_schema, OLD_SCHEMA)
    ledger = Ledger(PostgresBackend(PG_DSN, pg_schema), None)
    await ledger.open()
    ledger.append(row(1, cost=0.25))
    report = await ledger.report(since=None, by="model")
    await ledger.close()
    assert report["total"]["requests"] == 2 and report["total"]["cost_usd"] == 0.75


async def test_a_dsn_password_is_never_printed(pg_schema):
    dsn = "postgresql://floodgate:s3cret-pw@127.0.0.1:1/usage?sslmode=disable&password=s3cret-pw"
    assert redact(dsn) == "postgresql://floodgate@127.0.0.1:1/usage"
    backend = PostgresBackend(dsn, pg_schema)
    with pytest.raises(LedgerDatabaseError) as info:
        await backend.open()
    assert "s3cret-pw" not in str(info.value) and "127.0.0.1:1" in str(info.value)


def test_ledger_settings_are_checked(tmp_path):
    def errors(ledger: dict[str, Any]) -> dict[str, str]:
        config = config_from_dict({"upstreams": {"main": {"base_url": "http://127.0.0.1:9"}},
                                   "plugins": {"cost": {"ledger": ledger}}})
        with pytest.raises(proxy.ConfigErrors) as info:
            proxy.create_app(config, plugins=[CostPlugin()], builtins=(), entry_points=False)
        return {e.path: e.message for e in info.value.errors}

    found = errors({"backend": "postgresql"})
    assert "needs 'url'" in found["plugins.cost.ledger"]
    found = errors({"backend": "postgresql", "url": "mysql://root:hunter2@db/x"})
    assert "PostgreSQL DSN" in found["plugins.cost.ledger.url"] and "hunter2" not in str(found)
    found = errors({"backend": "postgresql", "url": PG_DSN, "schema": "x; DROP TABLE usage"})
    assert "identifier" in found["plugins.cost.ledger.schema"]
    found = errors({"backend": "mysql"})
    assert "plugins.cost.ledger.backend" in found
    found = errors({"journal_dir": str(tmp_path / "no" / "such")})
    assert "does not exist" in found["plugins.cost.ledger.journal_dir"]


def test_journal_files_are_private_and_locked(tmp_path):
    journal = Journal(str(tmp_path / "j"))
    journal.open()
    assert journal.append(encode(row(1)))
    [path] = journals(tmp_path / "j")
    assert (path.stat().st_mode & 0o777) == 0o600 and ((tmp_path / "j").stat().st_mode & 0o777) == 0o700
    assert list(journal.orphans()) == []  # its own file is never adopted
    other = Journal(str(tmp_path / "j"))
    assert list(other.orphans()) == []  # locked by a live owner
    journal.close()
    [(file, rows)] = list(other.orphans())
    assert rows == [row(1)._replace(epoch=rows[0].epoch)]
    file.remove()


async def test_an_admitted_request_has_a_provisional_row_until_its_final_one_replaces_it(tmp_path):
    clock = proxy.ManualClock(wall_start=JAN_1 + 3600)
    plugin = CostPlugin(clock=clock)
    db = tmp_path / "usage.db"
    settings = {"cost": {"ledger": {"path": str(db), "flush_interval_s": 60}}}
    h = PluginHarness(plugin, clock=clock, settings=settings)
    await h.start()
    assert plugin.ledger is not None
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    most = (proxy.estimate_prompt_tokens(body) * 2.0 + 10 * 8.0) / 1e6
    done, flushed, cut = h.context(body), h.context(body), h.context(body)
    for ctx in (done, flushed, cut):
        h.admit_now(ctx)
    h.attempt(done, usage=proxy.Usage(12, 3))
    await h.finished(done)  # replaced in the queue: one row goes to the database
    assert plugin.ledger.pending == 3
    await plugin.ledger.flush()
    h.attempt(flushed, usage=proxy.Usage(12, 3))
    await h.finished(flushed)  # replaced in the database
    await plugin.ledger.flush()
    rows = {r["request_id"]: r for r in stored(db)}
    assert len(rows) == 3
    for ctx in (done, flushed):
        assert (rows[ctx.request_id]["status"], rows[ctx.request_id]["estimated"]) == (200, 0)
        assert rows[ctx.request_id]["cost_usd"] == pytest.approx((12 * 2.0 + 3 * 8.0) / 1e6)
    # ``cut`` never finished (its gateway died with it in flight): charged its maximum, marked so.
    row = rows[cut.request_id]
    assert (row["status"], row["estimated"], row["attempts"], row["model"]) == (0, 1, 0, "gpt-4.1")
    assert row["cost_usd"] == pytest.approx(most)
    await h.stop()


def test_stale_temporary_journals_are_removed(tmp_path):
    directory = tmp_path / "j"
    directory.mkdir()
    stale = directory / ".tmp-journal-deadhost-1-aa-000000.jsonl"  # its creator died before renaming it
    stale.write_bytes(b"")
    creating = directory / ".tmp-journal-livehost-2-bb-000000.jsonl"
    fd = os.open(creating, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert list(Journal(str(directory)).orphans()) == []
        assert not stale.exists() and creating.exists()
    finally:
        os.close(fd)


async def test_floodgate_usage_reads_the_postgresql_ledger(pg_schema, tmp_path, capsys):
    import orjson

    ledger = Ledger(PostgresBackend(PG_DSN, pg_schema), None)
    await ledger.open()
    ledger.append(row(1, cost=0.5))
    ledger.append(row(2, key="bot", cost=0.25))
    await ledger.close()
    config = cost_config(tmp_path, f'{{backend: postgresql, url: "${{TEST_LEDGER_DSN}}", schema: {pg_schema}}}')
    os.environ["TEST_LEDGER_DSN"] = PG_DSN
    try:
        code = await asyncio.to_thread(usage_cli, "--config", str(config), "--json")
    finally:
        del os.environ["TEST_LEDGER_DSN"]
    assert code == 0
    report = orjson.loads(capsys.readouterr().out)
    assert [(g["group"], g["cost_usd"]) for g in report["groups"]] == [("shop", 0.5), ("bot", 0.25)]


async def test_a_hedged_race_bills_both_attempts_and_counts_one_request(tmp_path):
    clock = proxy.ManualClock()
    plugin = CostPlugin(clock=clock)
    async with PluginHarness(plugin, clock=clock, settings={"cost": {"ledger": {"path": str(tmp_path / "u.db")}}}) as h:
        ctx = await h.route(h.context())
        slow = h.attempt(ctx, target=ctx.config.target("gpt-4.1"), status=200, error="cancelled", duration=0.4)
        slow.hedged, slow.usage, slow.usage_estimated = True, proxy.Usage(12, 0), True
        fast = h.attempt(ctx, target=ctx.config.target("deepseek-v3.2"), status=200, usage=proxy.Usage(12, 30))
        fast.hedged = fast.hedge = fast.committed = True
        await h.finished(ctx)
        report = await plugin.ledger.report(since=None, by="model")
    by_model = {g["group"]: g for g in report["groups"]}
    loser = proxy.Price(input=2.0, output=8.0).cost(proxy.Usage(12, 0))
    winner = proxy.Price(input=0.28, output=0.42).cost(proxy.Usage(12, 30))
    assert by_model["gpt-4.1"]["cost_usd"] == pytest.approx(loser) and by_model["gpt-4.1"]["requests"] == 0
    assert by_model["gpt-4.1"]["estimated"] == 1
    assert by_model["deepseek-v3.2"]["requests"] == 1
    assert report["total"]["requests"] == 1 and report["total"]["cost_usd"] == pytest.approx(loser + winner)


async def test_a_metered_passthrough_is_priced_at_the_model_its_answer_names(tmp_path):
    clock = proxy.ManualClock()
    plugin = CostPlugin(clock=clock)
    models = {"gpt-4.1": {"price": {"input": 2.0, "output": 8.0}}, "gpt-*": {"price": None}}
    async with PluginHarness(plugin, clock=clock, models=models,
                             settings={"cost": {"ledger": {"path": str(tmp_path / "u.db")}}}) as h:
        stored = h.context({"prompt": {"id": "pmpt_1"}}, endpoint="responses", kind=proxy.EndpointKind.PASSTHROUGH)
        h.attempt(stored, target=stored.config.target("gpt-4.1"), usage=proxy.Usage(100, 10))  # metered
        other = h.context({"purpose": "batch"}, endpoint="files", kind=proxy.EndpointKind.PASSTHROUGH)
        h.attempt(other, target=proxy.Target("-", "main", "-"))
        unpriced = h.context({"prompt": {"id": "pmpt_2"}}, endpoint="responses", kind=proxy.EndpointKind.PASSTHROUGH)
        h.attempt(unpriced, target=unpriced.config.target("gpt-5"), usage=proxy.Usage(100, 10))  # a pattern's name
        for ctx in (stored, other, unpriced):
            await h.finished(ctx)
    assert stored.cost == pytest.approx(proxy.Price(input=2.0, output=8.0).cost(proxy.Usage(100, 10)))
    assert other.cost is None and unpriced.cost is None
