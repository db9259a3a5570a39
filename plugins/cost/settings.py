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
    monthly_usd: proxy.NonNegativeFloat | None = None


class LedgerSettings(proxy.Settings):
    enabled: bool = True
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    path: str = "usage.db"  # sqlite
    url: str | None = None  # postgresql: a DSN (a secret: never printed)
    schema_name: str | None = Field(None, alias="schema")  # postgresql: the table's schema
    journal_dir: str | None = None
    batch_size: proxy.PositiveInt = 200
    flush_interval_s: proxy.PositiveFloat = 1.0
    warn_backlog: proxy.PositiveInt = 10_000

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
    default_budget: BudgetSettings = BudgetSettings()
    #: Output tokens reserved at admission for a request that sets no output limit.
    default_max_tokens: proxy.NonNegativeInt = 1024
    ledger: LedgerSettings = LedgerSettings()


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
