"""The usage ledger of the ``cost`` plugin: one SQLite row per finished request.

Rows are appended to an in-memory list on the hot path (O(1), no I/O) and
written in batches by a background task, one transaction per batch, on a
dedicated single-thread executor that owns the only connection (so the
connection is never used from two threads, even when a caller is cancelled
mid-flush). :meth:`Ledger.close` writes everything still pending: nothing is
lost on a graceful shutdown.

The module also holds the read side (:func:`summarize`, :func:`read_report`,
:func:`format_table`) shared by ``floodgate usage`` and ``GET /-/usage``.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

log = logging.getLogger("floodgate.cost")

T = TypeVar("T")

MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    request_id        TEXT NOT NULL,
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
    cost_usd          REAL NOT NULL,
    status            INTEGER NOT NULL,
    latency_ms        REAL NOT NULL,
    endpoint          TEXT NOT NULL,
    short_circuit     TEXT               -- the Reply's source when no upstream was called
);
CREATE INDEX IF NOT EXISTS usage_epoch ON usage (epoch);
"""

_INSERT = ("INSERT INTO usage (request_id, ts, epoch, key, requested_model, model, route, attempts, "
           "prompt_tokens, completion_tokens, cached_tokens, estimated, cost_usd, status, latency_ms, "
           "endpoint, short_circuit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")

#: ``by`` choices and the SQL expression each groups on (a fixed map: no injection).
GROUPS: dict[str, str] = {
    "key": "key",
    "model": "COALESCE(model, '-')",
    "route": "COALESCE(route, '-')",
    "day": "substr(ts, 1, 10)",
}

_SINCE_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT_SECONDS = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


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


def iso_utc(epoch: float) -> str:
    """``2026-11-01T12:34:56.789Z``."""
    whole = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((epoch - whole) * 1000):03d}Z"


def parse_since(text: str, now: float | None = None) -> float:
    """The Unix time ``text`` means: a UTC date or date-time (``2026-11-01``,
    ``2026-11-01T12:00``) or a span back from now (``30m``, ``24h``, ``7d``, ``2w``).

    Raises :class:`ValueError` with a message fit for the user.
    """
    match = _SINCE_RELATIVE.match(text)
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a date (2026-11-01), a date-time (2026-11-01T12:00) "
                         "nor a span (30m, 24h, 7d, 2w)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def periods(now: float) -> tuple[float, float, float, float]:
    """The UTC calendar periods containing ``now``: (day start, day end, month start, month end)."""
    t = time.gmtime(now)
    day = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
    month = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    year, next_month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(day), float(day + 86400), float(month), float(calendar.timegm((year, next_month, 1, 0, 0, 0)))


# -- the read side (shared by the CLI and the HTTP endpoint) -------------------

def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0)
    if path != MEMORY:
        conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        conn.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, far fewer fsyncs
    conn.executescript(_SCHEMA)
    return conn


def summarize(conn: sqlite3.Connection, *, since: float | None, by: str) -> dict[str, Any]:
    """Requests, tokens, cost and estimated rows per group, with totals.

    :param since: Unix time of the oldest row to count, or ``None`` for all.
    :param by: one of :data:`GROUPS`.
    """
    expr = GROUPS[by]  # KeyError for a bad ``by``: callers validate first
    where, params = ("WHERE epoch >= ?", (since,)) if since is not None else ("", ())
    order = "grp" if by == "day" else "cost DESC, grp"
    rows = conn.execute(
        f"SELECT {expr} AS grp, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
        f"COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(cost_usd), 0.0) AS cost, COALESCE(SUM(estimated), 0) "
        f"FROM usage {where} GROUP BY grp ORDER BY {order}", params).fetchall()
    groups = [{"group": g, **_numbers(r)} for g, *r in rows]
    total = _numbers([sum(r[i] for r in rows) for i in range(1, 7)])
    return {"by": by, "since": iso_utc(since) if since is not None else None, "groups": groups, "total": total}


def _numbers(values: Sequence[Any]) -> dict[str, Any]:
    requests, prompt, completion, cached, cost, estimated = values
    return {"requests": int(requests), "prompt_tokens": int(prompt), "completion_tokens": int(completion),
            "cached_tokens": int(cached), "cost_usd": round(float(cost), 10), "estimated": int(estimated)}


def read_report(path: str, *, since: float | None, by: str) -> dict[str, Any]:
    """:func:`summarize` a ledger file. Raises :class:`FileNotFoundError` if it does not exist."""
    if path == MEMORY or not os.path.isfile(path):
        raise FileNotFoundError(path)
    with contextlib.closing(sqlite3.connect(path, timeout=10.0)) as conn:
        conn.executescript(_SCHEMA)  # a file created by something else: an empty ledger, not a crash
        return summarize(conn, since=since, by=by)


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table with a totals line."""
    head = (report["by"], "requests", "prompt tokens", "completion tokens", "cost USD", "estimated")

    def cells(label: str, n: dict[str, Any]) -> tuple[str, ...]:
        return (label, f"{n['requests']:,}", f"{n['prompt_tokens']:,}", f"{n['completion_tokens']:,}",
                f"{n['cost_usd']:,.6f}", f"{n['estimated']:,}")

    body = [cells(str(g["group"]), g) for g in report["groups"]]
    total = cells("total", report["total"])
    widths = [max(len(row[i]) for row in (head, *body, total)) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    since = f" since {report['since']}" if report["since"] else ""
    title = f"usage by {report['by']}{since}"
    return "\n".join([title, "", line(head), rule, *map(line, body), rule, line(total)])


# -- the write side ---------------------------------------------------------------

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
