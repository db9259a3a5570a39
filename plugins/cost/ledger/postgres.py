"""The PostgreSQL ledger (asyncpg): one database for a fleet of gateways.

Every gateway host keeps its own journal (see :mod:`.journal`) and moves its rows
here in batches, each batch one pipelined ``executemany`` in one transaction,
upserted by ``row_id`` (a request's final row replaces its provisional one; a replay
changes nothing). The DSN may carry a password: it is never printed — logs and
errors show :func:`redact`'s form, and a driver message is scrubbed of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ..report import summary_query, summary_result
from ..rows import COLUMNS, UPSERT, Row, values

__all__ = ["PostgresBackend", "redact"]

_TABLE = """
CREATE TABLE IF NOT EXISTS usage (
    row_id            TEXT,
    request_id        TEXT NOT NULL,
    ts                TEXT NOT NULL,
    epoch             DOUBLE PRECISION NOT NULL,
    key               TEXT NOT NULL,
    requested_model   TEXT,
    model             TEXT,
    route             TEXT,
    attempts          INTEGER NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    estimated         SMALLINT NOT NULL,
    cost_usd          DOUBLE PRECISION NOT NULL,
    status            INTEGER NOT NULL,
    latency_ms        DOUBLE PRECISION NOT NULL,
    endpoint          TEXT NOT NULL,
    short_circuit     TEXT,
    kind              TEXT,
    method            TEXT,
    request_bytes     BIGINT NOT NULL DEFAULT 0,
    response_bytes    BIGINT NOT NULL DEFAULT 0,
    unpriced          SMALLINT NOT NULL DEFAULT 0,
    hedged            SMALLINT NOT NULL DEFAULT 0,
    deployment        TEXT,
    degraded          TEXT
)"""

#: Columns added since the first schema (``ADD COLUMN IF NOT EXISTS``: tables made by older versions).
_ADDED = ("row_id TEXT", "kind TEXT", "method TEXT", "request_bytes BIGINT NOT NULL DEFAULT 0",
          "response_bytes BIGINT NOT NULL DEFAULT 0", "unpriced SMALLINT NOT NULL DEFAULT 0",
          "hedged SMALLINT NOT NULL DEFAULT 0", "deployment TEXT", "degraded TEXT")

_INSERT = (f"INSERT INTO usage ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "
           f"ON CONFLICT (row_id) DO UPDATE SET {UPSERT}")

_SPENT = ("SELECT key, SUM(CASE WHEN epoch >= $1 THEN cost_usd ELSE 0 END), SUM(cost_usd) "
          "FROM usage WHERE epoch >= $2 GROUP BY key")


def redact(dsn: str) -> str:
    """The DSN fit to print: no password, no query string (which may hold one)."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, "", ""))


class LedgerDatabaseError(Exception):
    """The ledger database failed; the message never holds the DSN's password."""


class PostgresBackend:
    """The ledger's database side on PostgreSQL.

    :param dsn: ``postgresql://user[:password]@host[:port]/database[?...]``.
    :param schema: the schema of the ``usage`` table (created if missing); ``None``: the
        server's ``search_path``.
    """

    def __init__(self, dsn: str, schema: str | None = None) -> None:
        self._dsn = dsn
        self._secret = urlsplit(dsn).password
        self.schema = schema
        self.name = redact(dsn)
        self._pool: asyncpg.Pool | None = None

    def _scrub(self, exc: BaseException) -> LedgerDatabaseError:
        message = f"{type(exc).__name__}: {exc}"
        if self._secret:
            message = message.replace(self._secret, "***")
        return LedgerDatabaseError(f"PostgreSQL ledger {self.name}: {message}")

    def _ready(self) -> asyncpg.Pool:
        assert self._pool is not None, "the ledger is not open"
        return self._pool

    async def open(self) -> None:
        settings = {"search_path": self.schema} if self.schema else None
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=2, server_settings=settings,
                                                   command_timeout=60)
            async with self._pool.acquire() as conn, conn.transaction():
                # One migrator at a time across the fleet (CREATE ... IF NOT EXISTS races otherwise).
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('floodgate.ledger'))")
                if self.schema:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(_TABLE)
                for column in _ADDED:
                    await conn.execute(f"ALTER TABLE usage ADD COLUMN IF NOT EXISTS {column}")
                await conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS usage_row_id ON usage (row_id)")
                await conn.execute("CREATE INDEX IF NOT EXISTS usage_epoch ON usage (epoch)")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            await self.close()
            raise self._scrub(exc) from None

    async def write(self, rows: Sequence[Row]) -> None:
        try:
            async with self._ready().acquire() as conn, conn.transaction():
                await conn.executemany(_INSERT, [values(r) for r in rows])
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._scrub(exc) from None

    async def spent(self, month_start: float, day_start: float) -> dict[str, tuple[float, float]]:
        records = await self._ready().fetch(_SPENT, day_start, month_start)
        return {r[0]: (float(r[1] or 0.0), float(r[2] or 0.0)) for r in records}

    async def summarize(self, *, since: float | None, by: str) -> dict[str, Any]:
        sql, params = summary_query(by, since, "$1")
        try:
            records = await self._ready().fetch(sql, *params)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._scrub(exc) from None
        return summary_result([tuple(r) for r in records], by=by, since=since)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
