"""The ``plugins.cost`` block: budgets, the reservation estimate and the usage ledger."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

import proxy

from .rows import MEMORY

__all__ = ["BudgetSettings", "CostSettings", "LedgerSettings", "journal_dir", "ledger_path"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class BudgetSettings(proxy.Settings):
    """US dollars a key may spend per UTC calendar period; ``None`` = unlimited."""

    daily_usd: proxy.NonNegativeFloat | None = None
    """US dollars per UTC day; unset: no cap."""
    monthly_usd: proxy.NonNegativeFloat | None = None
    """US dollars per UTC calendar month; unset: no cap."""


class LedgerSettings(proxy.Settings):
    """The usage ledger: where rows are stored, and how often they move there."""

    enabled: bool = True
    """One row per finished request (model calls, short-circuited ones included, model lists,
    passthrough; not `/-/` admin calls), and one per hedge that lost its race."""
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    """`sqlite` (one host; WAL, safe with several worker processes writing the same file) or
    `postgresql` (a fleet)."""
    path: str = "usage.db"
    """SQLite: the file, relative to the working directory, on a local filesystem; `:memory:`
    keeps nothing (and has no journal)."""
    url: str | None = None
    """PostgreSQL (required with `backend: postgresql`): a DSN, `postgresql://user@host:5432/db`
    (asyncpg). A secret, never printed: use `${LEDGER_DSN}`."""
    schema_name: str | None = Field(None, alias="schema")
    """PostgreSQL: the schema of the `usage` table (created if missing); unset: the server's
    `search_path`."""
    journal_dir: str | None = None
    """This host's journals (local disk, shared by the workers of one host); unset:
    `<path>.journal.d/` beside the SQLite file, `./usage-journal/` for PostgreSQL."""
    batch_size: proxy.PositiveInt = 200
    """Rows moved from the journal to the database per batch, off the hot path."""
    flush_interval_s: proxy.PositiveFloat = 1.0
    """Seconds between moves at least; everything pending is stored on shutdown."""
    warn_backlog: proxy.PositiveInt = 10_000
    """Log a warning when this many rows wait (none is dropped)."""

    @field_validator("url")
    @classmethod
    def _dsn(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a PostgreSQL DSN (postgresql://user@host:5432/database)")  # never the value
        return value

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.match(value):
            raise ValueError("must be a plain SQL identifier (letters, digits, underscores)")
        return value

    @model_validator(mode="after")
    def _backend_needs(self) -> LedgerSettings:
        if self.enabled and self.backend == "postgresql" and not self.url:
            raise ValueError("backend postgresql needs 'url' (a DSN such as postgresql://floodgate@db:5432/usage)")
        return self


class CostSettings(proxy.Settings):
    """Exact cost at the catalogue's prices, per-key budgets that hold under concurrency (each
    request reserves its maximum cost at admission), and the usage ledger that loses nothing
    answered. See the [README](../README.md#pluginscost--exact-cost-budgets-the-usage-ledger)."""

    default_budget: BudgetSettings = BudgetSettings()
    """The budget of keys without their own (`keys[].budget` of the auth plugin)."""
    default_max_tokens: proxy.NonNegativeInt = 1024
    """Output tokens reserved at admission for a request that sets no output limit (nor does its
    route)."""
    ledger: LedgerSettings = LedgerSettings()
    """The usage ledger: one row per request, journaled on local disk, then stored in SQLite or
    PostgreSQL."""


def ledger_path(config: proxy.Config, settings: LedgerSettings) -> str:
    """The SQLite file as an absolute path (relative paths are relative to the working directory)."""
    if settings.path == MEMORY:
        return MEMORY
    path = os.path.abspath(os.path.expanduser(settings.path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise config.error(("plugins", "cost", "ledger", "path"), f"directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise config.error(("plugins", "cost", "ledger", "path"), f"{path!r} is a directory, not a file")
    return path


def journal_dir(config: proxy.Config, settings: LedgerSettings, path: str) -> str | None:
    """Where this host's journals live: ``journal_dir``, else beside the SQLite file
    (``usage.db.journal.d``), else ``usage-journal`` in the working directory. ``None`` for
    an in-memory ledger, which keeps nothing anyway."""
    if settings.journal_dir is not None:
        chosen = os.path.abspath(os.path.expanduser(settings.journal_dir))
    elif settings.backend == "sqlite":
        if path == MEMORY:
            return None
        chosen = path + ".journal.d"
    else:
        chosen = os.path.abspath("usage-journal")
    parent = os.path.dirname(chosen)
    if not os.path.isdir(parent):
        raise config.error(("plugins", "cost", "ledger", "journal_dir"), f"directory {parent!r} does not exist")
    if os.path.exists(chosen) and not os.path.isdir(chosen):
        raise config.error(("plugins", "cost", "ledger", "journal_dir"), f"{chosen!r} is not a directory")
    return chosen
