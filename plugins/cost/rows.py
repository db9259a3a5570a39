"""One ledger row per finished request: its fields, its journal line, its timestamp text."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import orjson

__all__ = ["COLUMNS", "MEMORY", "UPSERT", "Row", "decode", "encode", "iso_utc", "values"]

#: The SQLite path of an in-memory database (readable only through the gateway's own connection).
MEMORY = ":memory:"


class Row(NamedTuple):
    """One finished request, as appended on the hot path (``ts`` is derived when written).

    ``row_id`` is made by the gateway and unique (the idempotency key of journal
    replays); ``request_id`` may come from the client's ``x-request-id`` and so is
    not. A request that goes upstream gets a *provisional* row as it is admitted
    (``status`` 0, its maximum cost, ``estimated``), replaced by its final row when
    it finishes: if its gateway dies in between, the provisional row is what stays.
    ``unpriced`` rows (passthrough, models without a price) have a cost the gateway
    cannot know: ``cost_usd`` is 0 there and means "unknown". A hedged request
    (two attempts raced) has one more row per attempt that lost the race,
    ``hedged`` marked: its usage as reported or estimated, its cost, status 0.
    ``deployment`` is the deployment of ``model`` that served (``None``: a model without
    deployments); ``degraded`` the overload steps that changed how the request was
    served (comma-separated, ``None``: served as asked).
    """

    row_id: str
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
    kind: str
    method: str
    request_bytes: int
    response_bytes: int
    unpriced: bool
    hedged: bool = False
    deployment: str | None = None
    degraded: str | None = None


#: The table's columns in insert order: ``ts`` (text of ``epoch``) follows ``request_id``.
COLUMNS: tuple[str, ...] = ("row_id", "request_id", "ts", *Row._fields[2:])


#: The upsert's assignments: a request's final row replaces its provisional one (same ``row_id``);
#: replaying a row already stored changes nothing.
UPSERT = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])


def values(row: Row) -> tuple[Any, ...]:
    """The row as the insert's parameters (booleans as 0/1 for both backends)."""
    return (row.row_id, row.request_id, iso_utc(row.epoch), *row[2:11], int(row.estimated), *row[12:21],
            int(row.unpriced), int(row.hedged), row.deployment, row.degraded)


def encode(row: Row) -> bytes:
    """The row's journal line (a JSON array and a newline: one ``write`` appends it whole)."""
    return orjson.dumps(tuple(row)) + b"\n"


def decode(line: bytes) -> Row:
    """A journal line back to its row. Raises :class:`ValueError` on a torn or foreign line."""
    data = orjson.loads(line)
    # Journals written before a field was added lack its trailing value: the default fills in.
    required = len(Row._fields) - len(Row._field_defaults)
    if not isinstance(data, list) or not required <= len(data) <= len(Row._fields):
        raise ValueError("not a ledger row")
    return Row(*data)


def iso_utc(epoch: float) -> str:
    """``2026-11-01T12:34:56.789Z``."""
    whole = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((epoch - whole) * 1000):03d}Z"
