"""The ledger the ``plugins.cost.ledger`` settings describe: its database backend and journal."""

from __future__ import annotations

import proxy

from .ledger import Backend, Ledger
from .ledger.postgres import PostgresBackend
from .ledger.sqlite import SQLiteBackend
from .settings import LedgerSettings, journal_dir, ledger_path

__all__ = ["build_backend", "build_ledger"]


def build_backend(config: proxy.Config, settings: LedgerSettings) -> Backend:
    """The database side (not opened). Raises :class:`proxy.ConfigError` for a bad path."""
    if settings.backend == "postgresql":
        assert settings.url is not None  # the settings' validator requires it
        return PostgresBackend(settings.url, settings.schema_name)
    return SQLiteBackend(ledger_path(config, settings))


def build_ledger(config: proxy.Config, settings: LedgerSettings) -> Ledger | None:
    """The whole ledger (not opened); ``None`` when it is disabled."""
    if not settings.enabled:
        return None
    backend = build_backend(config, settings)
    path = backend.path if isinstance(backend, SQLiteBackend) else ""
    return Ledger(backend, journal_dir(config, settings, path), batch_size=settings.batch_size,
                  flush_interval=settings.flush_interval_s, warn_backlog=settings.warn_backlog)
