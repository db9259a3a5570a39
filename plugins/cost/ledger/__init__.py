"""The usage ledger: one row per finished request, never lost once its response was sent.

Parts:

* :mod:`.journal` — this process's append-only journal files, and the adoption of
  orphans (journals of processes that died);
* :mod:`.sqlite` — the SQLite database (one host, several workers);
* :mod:`.postgres` — the PostgreSQL database (a fleet).

:class:`Ledger` ties them: :meth:`Ledger.append` (hot path) writes the row's
journal line and keeps the row in memory; a background task moves batches into
the database (rotate the journal, store the rows, delete the sealed file) every
``flush_interval`` or as soon as ``batch_size`` rows wait; orphaned journals are
adopted at start-up and every ``ADOPT_EVERY`` seconds. A batch the database
refuses is kept (its journal ``fsync``\\ ed) and retried; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..rows import Row, encode
from .journal import Journal, JournalFile, write_orphan

__all__ = ["ADOPT_EVERY", "Backend", "Ledger"]

log = logging.getLogger("floodgate.cost")

#: Seconds between two looks for orphaned journals (processes that died while running).
ADOPT_EVERY = 10.0


class Backend(Protocol):
    """The database side of the ledger (:mod:`.sqlite`, :mod:`.postgres`)."""

    name: str  # fit to print: a path or a DSN without its password

    async def open(self) -> None: ...

    async def write(self, rows: list[Row]) -> None:
        """Store rows in one transaction, skipping those already stored (same ``row_id``)."""

    async def spent(self, month_start: float, day_start: float) -> dict[str, tuple[float, float]]:
        """Per key: (cost since ``day_start``, cost since ``month_start``)."""
        ...

    async def summarize(self, *, since: float | None, by: str) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class Ledger:
    """Journal plus database (see the module docstring).

    :param journal_dir: where this host's journals live; ``None``: no journal (an
        in-memory SQLite ledger, which keeps nothing anyway).
    :param batch_size: move rows as soon as this many wait.
    :param flush_interval: ... and at least this often (seconds).
    :param warn_backlog: log a warning when more rows than this wait (kept, never dropped).
    """

    def __init__(self, backend: Backend, journal_dir: str | None, *, batch_size: int = 200,
                 flush_interval: float = 1.0, warn_backlog: int = 10_000) -> None:
        self.backend = backend
        self.journal = Journal(journal_dir) if journal_dir is not None else None
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.warn_backlog = warn_backlog
        self._pending: list[Row] = []
        self._open_rows: dict[str, int] = {}  # row_id -> index in _pending of a provisional row
        self._batches: list[tuple[list[Row], JournalFile | None]] = []  # sealed, waiting for the database
        self._warned = False
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._open = False
        self._closed = False
        self._batched = 0  # rows in _batches
        #: Called with :attr:`pending` whenever it changes (a gauge's ``set``: unlike a callback
        #: gauge, it works with worker processes).
        self.observe: Callable[[int], None] | None = None

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def pending(self) -> int:
        """Rows appended but not stored in the database yet."""
        return len(self._pending) + self._batched

    async def open(self) -> int:
        """Open the database and the journal, store the rows of orphaned journals (returned:
        how many), start the background writer."""
        await self.backend.open()
        self._open = True
        adopted = 0
        if self.journal is not None:
            await asyncio.to_thread(self.journal.open)
            adopted = await self.adopt()
        self._task = asyncio.create_task(self._writer(), name="floodgate-ledger-writer")
        return adopted

    def begin(self, row: Row) -> None:
        """Journal the provisional row of a request now going upstream (see :meth:`append`)."""
        self.append(row, provisional=True)

    def append(self, row: Row, *, provisional: bool = False) -> None:
        """Journal the row and queue it for the database (hot path: one ``write`` syscall).

        A row with the ``row_id`` of a provisional one (:meth:`begin`) replaces it: in
        the queue if it is still there, else in the database (rows are upserted).
        """
        if self._closed:  # a request that outlived shutdown: leave it for the next gateway
            self._late(row)
            return
        if self.journal is not None:
            self.journal.append(encode(row))
        pending = self._pending
        if provisional:
            self._open_rows[row.row_id] = len(pending)
        elif self._open_rows:
            at = self._open_rows.pop(row.row_id, None)
            if at is not None:
                pending[at] = row
                return
        pending.append(row)
        n = len(pending)
        if self.observe is not None:
            self.observe(n + self._batched)
        if n >= self.batch_size:
            self._wake.set()
        if n > self.warn_backlog and not self._warned:
            self._warned = True
            log.warning("usage ledger %s: %d rows waiting to be stored (the database is slow or down; "
                        "they are kept, and journaled)", self.name, n)

    async def adopt(self) -> int:
        """Store the rows of every orphaned journal in the directory; how many rows."""
        if self.journal is None:
            return 0
        found = await asyncio.to_thread(lambda: list(self.journal.orphans()) if self.journal else [])
        total = 0
        for file, rows in found:
            try:
                if rows:
                    await self.backend.write(rows)
            except Exception:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(file.release)
                log.exception("usage ledger %s: storing the orphaned journal %s failed; retried later",
                              self.name, file.path)
                continue
            await asyncio.to_thread(file.remove)
            total += len(rows)
        if total:
            log.warning("usage ledger %s: stored %d rows left in the journals of processes that stopped "
                        "without closing the ledger", self.name, total)
        return total

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        next_adopt = loop.time() + ADOPT_EVERY
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            try:
                await self.flush()
                if loop.time() >= next_adopt:
                    next_adopt = loop.time() + ADOPT_EVERY
                    await self.adopt()
            except Exception:  # never let the writer die: rows would pile up unstored
                log.exception("usage ledger %s: flush failed", self.name)

    async def flush(self) -> None:
        """Store every row appended so far (one transaction per batch)."""
        if not self._open:
            return
        async with self._lock:
            if self._pending:  # seal exactly the rows of this batch: same event-loop step, no await between
                sealed = self.journal.rotate() if self.journal is not None else None
                self._batches.append((self._pending, sealed))
                self._batched += len(self._pending)
                self._pending = []
                self._open_rows = {}
            while self._batches:
                rows, sealed = self._batches[0]
                try:
                    await self.backend.write(rows)
                except Exception as exc:
                    log.error("usage ledger %s: storing %d rows failed (%s); kept and retried", self.name,
                              len(rows), exc)
                    if sealed is not None:  # the database may be down a while: make the backlog crash-safe
                        with contextlib.suppress(OSError):
                            await asyncio.to_thread(sealed.sync)
                    return
                self._batches.pop(0)
                self._batched -= len(rows)
                if self.observe is not None:
                    self.observe(self.pending)
                if sealed is not None:
                    await asyncio.to_thread(sealed.remove)
            if self._warned and self.pending <= self.warn_backlog:
                self._warned = False

    async def spent(self, month_start: float, day_start: float) -> dict[str, tuple[float, float]]:
        """Per key: (cost since ``day_start``, cost since ``month_start``), rows not yet stored included."""
        found = await self.backend.spent(month_start, day_start)
        for rows in [self._pending, *(rows for rows, _ in self._batches)]:
            for row in rows:
                if row.epoch >= month_start and row.cost_usd:
                    day, month = found.get(row.key, (0.0, 0.0))
                    found[row.key] = (day + (row.cost_usd if row.epoch >= day_start else 0.0),
                                      month + row.cost_usd)
        return found

    async def report(self, *, since: float | None, by: str) -> dict[str, Any]:
        """The summary (:func:`..report.summary_query`) after storing what is pending: current."""
        await self.flush()
        return await self.backend.summarize(since=since, by=by)

    async def close(self) -> None:
        """Stop the writer, store everything pending, close the journal and the database."""
        if self._closed or not self._open:
            return
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task  # finishes its current flush, then stops
        await self.flush()
        if self.pending:  # one more try, then say what is left (in the journal, for the next start)
            await self.flush()
            if self.pending:
                log.error("usage ledger %s: %d rows could not be stored; %s", self.name, self.pending,
                          "they stay in the journal for the next start" if self.journal else "they are lost")
        self._closed = True
        if self.observe is not None:
            self.observe(self.pending)
        if self.journal is not None:
            await asyncio.to_thread(self.journal.close)
        for _, sealed in self._batches:
            if sealed is not None:
                await asyncio.to_thread(sealed.release)
        await self.backend.close()

    def _late(self, row: Row) -> None:
        if self.journal is None:
            log.warning("usage ledger: request %s finished after shutdown; its row is lost", row.request_id)
            return
        try:
            write_orphan(self.journal.directory, encode(row))
        except OSError as exc:
            log.error("usage ledger: request %s finished after shutdown and could not be journaled (%s)",
                      row.request_id, exc.strerror)
