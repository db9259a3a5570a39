"""A killed gateway loses no answered request; several processes share one SQLite ledger (end to end).

The gateway runs as a real process (``python -m proxy serve``) with the mock upstream
inside it, its ledger writer set to move rows only every 30 s: after a burst, every
answered row is in the journal alone when ``kill -9`` lands. A restart must store them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from conftest import PG_DSN

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]
BURST = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, port: int, ledger: dict[str, Any]) -> Path:
    path = tmp_path / "floodgate.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": port, "access_log": False, "shutdown_timeout": 5},
        "upstreams": {"main": {"base_url": "builtin:mock", "mock": {"completion_tokens": 8}}},
        "models": {"gpt-4.1": {"upstream": "main", "price": {"input": 2.0, "output": 8.0}}},
        "plugins": {"cost": {"ledger": {
            "flush_interval_s": 30, "batch_size": 100_000,  # nothing reaches the database before the kill
            "journal_dir": str(tmp_path / "journal"), **ledger}}}}))
    return path


async def serve(config: Path, port: int, cwd: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(config), cwd=str(cwd),
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    async with aiohttp.ClientSession() as session:
        for _ in range(400):
            if proc.returncode is not None:
                raise AssertionError(f"serve exited: {(await proc.stderr.read()).decode()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return proc
            await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not become ready")


async def burst(port: int) -> set[str]:
    """BURST requests (streamed and not), 50 at a time; the request ids of those answered in full."""
    answered: set[str] = set()
    body: dict[str, Any] = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Where is my parcel?"}]}
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int) -> None:
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                    json={**body, "stream": i % 2 == 1}) as resp:
                data = await resp.read()
                if resp.status == 200 and (i % 2 == 0 or data.rstrip().endswith(b"[DONE]")):
                    answered.add(resp.headers["x-request-id"])
        await asyncio.gather(*(one(i) for i in range(BURST)))
    return answered


async def kill_after_burst_and_restart(tmp_path: Path, ledger: dict[str, Any],
                                      count: Callable[[], Awaitable[int]]) -> set[str]:
    """The request ids answered; ``count()`` (rows in the database) is 0 at the kill: the journal has them."""
    port = free_port()
    config = write_config(tmp_path, port, ledger)
    proc = await serve(config, port, tmp_path)
    try:
        answered = await burst(port)
    finally:
        proc.kill()  # SIGKILL, right after the last answer
        await proc.wait()
    assert len(answered) == BURST
    assert len(list((tmp_path / "journal").glob("journal-*.jsonl"))) == 1  # the dead worker's, left behind
    assert await count() == 0
    proc = await serve(config, port, tmp_path)  # adopts the journal before it serves
    proc.terminate()
    await proc.wait()
    return answered


async def test_kill_9_after_a_burst_loses_no_answered_row_sqlite(tmp_path):
    db = tmp_path / "usage.db"

    async def count() -> int:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]

    answered = await kill_after_burst_and_restart(tmp_path, {"path": str(db)}, count)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        stored = {r[0] for r in conn.execute("SELECT request_id FROM usage")}
        costs = conn.execute("SELECT MIN(cost_usd), COUNT(*) FROM usage").fetchone()
        provisional = conn.execute("SELECT COUNT(*) FROM usage WHERE status = 0").fetchone()[0]
    lost = answered - stored
    print(f"\nSQLite, kill -9 after {BURST} answered requests: {len(lost)} rows lost, {len(stored)} stored "
          f"({provisional} provisional: the kill came before their final row)")
    assert lost == set() and costs[0] > 0 and costs[1] == BURST  # each row once, priced
    assert list((tmp_path / "journal").glob("journal-*.jsonl")) == []


async def test_kill_9_after_a_burst_loses_no_answered_row_postgresql(tmp_path, pg_schema):
    async def count() -> int:
        conn = await asyncpg.connect(PG_DSN)
        try:
            return await conn.fetchval(f'SELECT COUNT(*) FROM "{pg_schema}".usage')
        finally:
            await conn.close()

    answered = await kill_after_burst_and_restart(
        tmp_path, {"backend": "postgresql", "url": PG_DSN, "schema": pg_schema}, count)
    conn = await asyncpg.connect(PG_DSN)
    try:
        stored = {r[0] for r in await conn.fetch(f'SELECT request_id FROM "{pg_schema}".usage')}
        count = await conn.fetchval(f'SELECT COUNT(*) FROM "{pg_schema}".usage')
        provisional = await conn.fetchval(f'SELECT COUNT(*) FROM "{pg_schema}".usage WHERE status = 0')
    finally:
        await conn.close()
    lost = answered - stored
    print(f"\nPostgreSQL, kill -9 after {BURST} answered requests: {len(lost)} rows lost, {len(stored)} stored "
          f"({provisional} provisional)")
    assert lost == set() and count == BURST


WRITER = """
import asyncio, sys, time
from plugins.cost.ledger import Ledger
from plugins.cost.ledger.sqlite import SQLiteBackend
from plugins.cost.rows import Row

async def main(db, journal, name, n):
    ledger = Ledger(SQLiteBackend(db), journal, batch_size=20, flush_interval=0.01)
    await ledger.open()
    for i in range(n):
        ledger.append(Row(f"{name}-{i}", f"{name}-{i}", time.time(), name, "m", "m", "m", 1, 1, 1, 0, False,
                          0.001, 200, 1.0, "chat/completions", None, "model", "POST", 1, 1, False))
        if i % 10 == 0:
            await asyncio.sleep(0)
    await ledger.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_several_processes_writing_one_sqlite_ledger_lose_nothing(tmp_path):
    db, per_process = tmp_path / "usage.db", 400
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(db), str(tmp_path / "journal"), f"w{n}", str(per_process), cwd=str(ROOT),
        stderr=asyncio.subprocess.PIPE) for n in range(4)]
    for proc in procs:
        assert await proc.wait() == 0, (await proc.stderr.read()).decode()[-2000:]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT key, COUNT(*), COUNT(DISTINCT row_id) FROM usage GROUP BY key").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert sorted(rows) == [(f"w{n}", per_process, per_process) for n in range(4)]
    assert mode == "wal"
