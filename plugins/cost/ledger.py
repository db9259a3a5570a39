"""The usage ledger of the ``cost`` plugin: one SQLite row per finished request.

Rows are appended to an in-memory list on the hot path (O(1), no I/O) and
written in batches by a background task, one transaction per batch, on a
dedicated single-thread executor that owns the only connection (so the
connection is never used from two threads, even when a caller is cancelled
mid-flush). :meth:`Ledger.close` writes everything still pending: nothing is
lost on a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

from .report import summarize
from .schema import MEMORY, SCHEMA, iso_utc

__all__ = ["Ledger", "Row"]

log = logging.getLogger("floodgate.cost")

T = TypeVar("T")

_INSERT = ("INSERT INTO usage (request_id, ts, epoch, key, requested_model, model, route, attempts, "
           "prompt_tokens, completion_tokens, cached_tokens, estimated, cost_usd, status, latency_ms, "
           "endpoint, short_circuit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class Row(NamedTuple):
    """One finished request, as appended on the hot path (``ts`` is derived when written)."""

    request_id: str
    epoch: float
    key: str
    requested_model: str | None
    model: str | None
    route: str | None
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    estimated: bool
    cost_usd: float
    status: int
    latency_ms: float
    endpoint: str
    short_circuit: str | None


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0)
    if path != MEMORY:
        conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        conn.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, far fewer fsyncs
    conn.executescript(SCHEMA)
    return conn


class Ledger:
    """Batched, off-the-hot-path writer of :class:`Row`\\ s to one SQLite file.

    :param path: the database file (or ``":memory:"``, readable only through this object).
    :param batch_size: write as soon as this many rows are pending.
    :param flush_interval: ... and at least this often (seconds).
    :param warn_backlog: log a warning when more rows than this are pending (the
        writer is falling behind); rows are kept, never dropped.
    """

    def __init__(self, path: str, *, batch_size: int = 200, flush_interval: float = 1.0,
                 warn_backlog: int = 10_000) -> None:
        self.path = path
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.warn_backlog = warn_backlog
        self._pending: list[Row] = []
        self._warned = False
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False

    @property
    def pending(self) -> int:
        """Rows appended but not written yet."""
        return len(self._pending)

    async def _run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None, "the ledger is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """Open (create) the database and start the background writer."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floodgate-ledger")
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._conn = await self._run_sync(_connect, self.path)
        self._task = asyncio.create_task(self._writer(), name="floodgate-ledger-writer")

    def append(self, row: Row) -> None:
        """Queue a row (hot path: no I/O, no formatting)."""
        if self._closed:  # a request that outlived shutdown: write it now rather than lose it
            self._write_late(row)
            return
        pending = self._pending
        pending.append(row)
        n = len(pending)
        if n >= self.batch_size and self._wake is not None:
            self._wake.set()
        if n > self.warn_backlog and not self._warned:
            self._warned = True
            log.warning("usage ledger %s: %d rows waiting to be written (the writer is falling behind; "
                        "rows are kept in memory)", self.path, n)

    async def _writer(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # never let the writer die: rows would pile up unwritten
                log.exception("usage ledger %s: flush failed", self.path)

    async def flush(self) -> None:
        """Write every pending row now (one transaction per batch taken)."""
        if self._lock is None or self._conn is None:
            return
        async with self._lock:
            while self._pending:
                rows, self._pending = self._pending, []
                try:
                    await self._run_sync(self._write, rows)
                except Exception:
                    self._pending[:0] = rows  # keep them: retried on the next flush
                    log.exception("usage ledger %s: writing %d rows failed; will retry", self.path, len(rows))
                    return
            if self._warned and len(self._pending) <= self.warn_backlog:
                self._warned = False

    def _write(self, rows: list[Row]) -> None:
        conn = self._conn
        assert conn is not None
        with conn:  # one transaction
            conn.executemany(_INSERT, [(r[0], iso_utc(r[1]), *r[1:]) for r in rows])

    def _write_late(self, row: Row) -> None:
        if self.path == MEMORY:
            log.warning("usage ledger: request %s finished after shutdown; its row is lost", row.request_id)
            return
        with contextlib.closing(_connect(self.path)) as conn, conn:
            conn.execute(_INSERT, (row[0], iso_utc(row[1]), *row[1:]))

    async def spent(self, month_start: float, day_start: float) -> dict[str, tuple[float, float]]:
        """Per key: (cost since ``day_start``, cost since ``month_start``)."""
        def query() -> dict[str, tuple[float, float]]:
            assert self._conn is not None
            rows = self._conn.execute(
                "SELECT key, SUM(CASE WHEN epoch >= ? THEN cost_usd ELSE 0 END), SUM(cost_usd) "
                "FROM usage WHERE epoch >= ? GROUP BY key", (day_start, month_start)).fetchall()
            return {key: (float(day or 0.0), float(month or 0.0)) for key, day, month in rows}
        return await self._run_sync(query)

    async def report(self, *, since: float | None, by: str) -> dict[str, Any]:
        """:func:`summarize` after writing what is pending (the answer is current)."""
        await self.flush()
        assert self._lock is not None
        async with self._lock:
            return await self._run_sync(lambda: summarize(self._conn, since=since, by=by))  # type: ignore[arg-type]

    async def close(self) -> None:
        """Stop the writer, write everything pending, close the database."""
        if self._closed or self._executor is None:
            return
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task  # finishes its current flush, then stops
        await self.flush()
        if self.pending:  # the last write failed: one more try, then say what is lost
            await self.flush()
            if self.pending:
                log.error("usage ledger %s: %d rows could not be written", self.path, self.pending)
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run_sync(conn.close)
        self._executor.shutdown(wait=False)
