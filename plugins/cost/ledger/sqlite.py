"""The SQLite ledger: one file per host, safe with several worker processes writing it.

WAL mode (readers never block the writer), a busy timeout (writers of other
processes take turns), ``synchronous=FULL`` (a committed batch survives a machine
crash: one fsync per batch, not per row). Every statement runs on one dedicated
thread that owns the only connection, so the connection is never shared between
threads even when a caller is cancelled mid-write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..report import summary_query, summary_result
from ..rows import COLUMNS, MEMORY, UPSERT, Row, values

__all__ = ["SQLiteBackend", "connect", "read_summary"]

T = TypeVar("T")

_TABLE = """
CREATE TABLE IF NOT EXISTS usage (
    row_id            TEXT,              -- made by the gateway, unique: replays never duplicate
    request_id        TEXT NOT NULL,     -- x-request-id (may be the client's own: not unique)
    ts                TEXT NOT NULL,     -- UTC ISO 8601, when the request finished
    epoch             REAL NOT NULL,     -- the same instant, Unix seconds
    key               TEXT NOT NULL,     -- the principal's name (never a secret)
    requested_model   TEXT,              -- what the client asked for
    model             TEXT,              -- the catalogue model actually used (last attempt)
    route             TEXT,
    attempts          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,  -- includes cached_tokens
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    estimated         INTEGER NOT NULL,  -- 1: usage estimated by the gateway
    cost_usd          REAL NOT NULL,     -- 0 and unknown when unpriced
    status            INTEGER NOT NULL,
    latency_ms        REAL NOT NULL,
    endpoint          TEXT NOT NULL,     -- chat/completions, or the passthrough path (files/file-abc)
    short_circuit     TEXT,              -- the Reply's source when no upstream was called
    kind              TEXT,              -- model, models, passthrough
    method            TEXT,
    request_bytes     INTEGER NOT NULL DEFAULT 0,
    response_bytes    INTEGER NOT NULL DEFAULT 0,
    unpriced          INTEGER NOT NULL DEFAULT 0, -- 1: the upstream was used but the cost is unknown
    hedged            INTEGER NOT NULL DEFAULT 0, -- 1: an attempt that lost a hedged race
    deployment        TEXT,              -- the deployment of model that served (NULL: none declared)
    degraded          TEXT               -- overload steps that served it, comma-separated (NULL: none)
)"""

#: Columns added since the first schema, with their definitions: existing files are migrated in place.
ADDED_COLUMNS = {
    "row_id": "TEXT", "kind": "TEXT", "method": "TEXT",
    "request_bytes": "INTEGER NOT NULL DEFAULT 0", "response_bytes": "INTEGER NOT NULL DEFAULT 0",
    "unpriced": "INTEGER NOT NULL DEFAULT 0", "hedged": "INTEGER NOT NULL DEFAULT 0",
    "deployment": "TEXT", "degraded": "TEXT",
}

_INDEXES = ("CREATE UNIQUE INDEX IF NOT EXISTS usage_row_id ON usage (row_id)",
            "CREATE INDEX IF NOT EXISTS usage_epoch ON usage (epoch)")

_INSERT = (f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
           f"ON CONFLICT (row_id) DO UPDATE SET {UPSERT}")


def connect(path: str, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open (create) the ledger and bring its table up to date; safe against other processes doing the same."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        if path != MEMORY:
            _wal(conn, timeout)
            conn.execute("PRAGMA synchronous=FULL")  # a committed batch survives a power cut
        conn.execute("BEGIN IMMEDIATE")  # the write lock first: two processes never migrate at once
        try:
            conn.execute(_TABLE)
            have = {r[1] for r in conn.execute("PRAGMA table_info(usage)")}
            for column, definition in ADDED_COLUMNS.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE usage ADD COLUMN {column} {definition}")
            for index in _INDEXES:
                conn.execute(index)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except BaseException:
        conn.close()
        raise
    return conn


def _wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode (persistent: once per file), waiting up to ``timeout`` seconds.

    Workers starting together on a new file race to switch it, and SQLite answers the
    losers "database is locked" at once (the switch takes no busy timeout): they read
    the mode first — WAL already, nothing to do — and otherwise try again shortly.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)  # on the ledger's own thread (or the CLI's): never the event loop
        delay = min(delay * 2, 0.1)


def insert(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    """Store rows in one transaction; a row already there (same ``row_id``) is replaced."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, [values(r) for r in rows])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def spent(conn: sqlite3.Connection, month_start: float, day_start: float) -> dict[str, tuple[float, float]]:
    """Per key: (cost since ``day_start``, cost since ``month_start``)."""
    rows = conn.execute(
        "SELECT key, SUM(CASE WHEN epoch >= ? THEN cost_usd ELSE 0 END), SUM(cost_usd) "
        "FROM usage WHERE epoch >= ? GROUP BY key", (day_start, month_start)).fetchall()
    return {key: (float(day or 0.0), float(month or 0.0)) for key, day, month in rows}


def summarize(conn: sqlite3.Connection, *, since: float | None, by: str) -> dict[str, Any]:
    sql, params = summary_query(by, since, "?")
    return summary_result(conn.execute(sql, params).fetchall(), by=by, since=since)


def read_summary(path: str, *, since: float | None, by: str) -> dict[str, Any]:
    """:func:`summarize` a ledger file (``floodgate usage``). :class:`FileNotFoundError` if there is none."""
    if path == MEMORY or not os.path.isfile(path):
        raise FileNotFoundError(path)
    with contextlib.closing(connect(path)) as conn:  # an old file is migrated; a foreign one gets the table
        return summarize(conn, since=since, by=by)


class SQLiteBackend:
    """The ledger's database side for one SQLite file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = path
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None, "the ledger is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connection(self) -> sqlite3.Connection:
        assert self._conn is not None, "the ledger is not open"
        return self._conn

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floodgate-ledger")
        self._conn = await self._run(connect, self.path)

    async def write(self, rows: Sequence[Row]) -> None:
        await self._run(lambda: insert(self._connection(), rows))

    async def spent(self, month_start: float, day_start: float) -> dict[str, tuple[float, float]]:
        return await self._run(lambda: spent(self._connection(), month_start, day_start))

    async def summarize(self, *, since: float | None, by: str) -> dict[str, Any]:
        return await self._run(lambda: summarize(self._connection(), since=since, by=by))

    async def close(self) -> None:
        if self._executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)
        self._executor.shutdown(wait=False)
        self._executor = None
