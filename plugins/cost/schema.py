"""The usage ledger's SQLite table, shared by its writer and its readers."""

from __future__ import annotations

import time

__all__ = ["MEMORY", "SCHEMA", "iso_utc"]

#: The ledger path of an in-memory database (readable only through the gateway's own connection).
MEMORY = ":memory:"

SCHEMA = """
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


def iso_utc(epoch: float) -> str:
    """``2026-11-01T12:34:56.789Z``."""
    whole = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((epoch - whole) * 1000):03d}Z"
