"""The ``plugins.cost`` block: the default budget and the usage ledger."""

from __future__ import annotations

import os

import proxy

from .schema import MEMORY

__all__ = ["BudgetSettings", "CostSettings", "LedgerSettings", "ledger_path"]


class BudgetSettings(proxy.Settings):
    """US dollars a key may spend per UTC calendar period; ``None`` = unlimited."""

    daily_usd: proxy.NonNegativeFloat | None = None
    monthly_usd: proxy.NonNegativeFloat | None = None


class LedgerSettings(proxy.Settings):
    enabled: bool = True
    path: str = "usage.db"
    batch_size: proxy.PositiveInt = 200
    flush_interval_s: proxy.PositiveFloat = 1.0
    warn_backlog: proxy.PositiveInt = 10_000


class CostSettings(proxy.Settings):
    default_budget: BudgetSettings = BudgetSettings()
    ledger: LedgerSettings = LedgerSettings()


def ledger_path(config: proxy.Config, settings: LedgerSettings) -> str:
    """The ledger file as an absolute path (relative paths are relative to the working directory)."""
    if settings.path == MEMORY:
        return MEMORY
    path = os.path.abspath(os.path.expanduser(settings.path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise config.error(("plugins", "cost", "ledger", "path"), f"directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise config.error(("plugins", "cost", "ledger", "path"), f"{path!r} is a directory, not a file")
    return path
