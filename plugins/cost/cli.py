"""``floodgate usage``: the usage ledger summarised on the command line, from either backend."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from typing import Any

import orjson

import proxy

from .factory import build_backend
from .ledger import Backend
from .ledger.postgres import LedgerDatabaseError
from .ledger.sqlite import SQLiteBackend, read_summary
from .report import GROUPS, format_table, parse_since
from .rows import MEMORY
from .settings import CostSettings

__all__ = ["add_usage_command", "usage_command"]


def add_usage_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "usage", help="summarise the usage ledger",
        description="Requests, tokens and cost from the cost plugin's usage ledger (plugins.cost.ledger in "
                    "the config: SQLite or PostgreSQL), grouped by key, model, route, day or kind.")
    proxy.add_config_option(parser)
    parser.add_argument("--since", type=_since_arg, metavar="WHEN",
                        help="only rows since a UTC date or date-time (2026-11-01, 2026-11-01T12:00) "
                             "or a span back from now (30m, 24h, 7d, 2w); default: all")
    parser.add_argument("--by", choices=tuple(GROUPS), default="key", help="group rows by (default: key)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=usage_command)


def _since_arg(text: str) -> float:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def usage_command(args: argparse.Namespace) -> int:
    """``floodgate usage``: print the ledger summary (table or JSON)."""
    try:
        config = proxy.load_config(args.config)
        settings = config.plugin_settings("cost", CostSettings).ledger
        backend = build_backend(config, settings) if settings.enabled else None
    except proxy.ConfigErrors as exc:
        errors = exc.errors
    except proxy.ConfigError as exc:
        errors = [exc]
    else:
        errors = []
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 1
    if backend is None:
        return _fail("the usage ledger is disabled (plugins.cost.ledger.enabled: false)")
    try:
        report = _read(backend, since=args.since, by=args.by)
    except FileNotFoundError as exc:
        return _fail(f"no usage ledger at {exc.args[0]} (nothing recorded yet?)")
    except sqlite3.DatabaseError as exc:
        return _fail(f"cannot read the usage ledger {backend.name}: {exc}")
    except LedgerDatabaseError as exc:  # scrubbed of the DSN's password
        return _fail(f"cannot read the usage ledger: {exc}")
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_table(report))
    return 0


def _read(backend: Backend, *, since: float | None, by: str) -> dict[str, Any]:
    if isinstance(backend, SQLiteBackend):
        if backend.path == MEMORY:
            raise sqlite3.DatabaseError("an in-memory ledger (:memory:) can only be read through GET /-/usage")
        return read_summary(backend.path, since=since, by=by)

    async def read() -> dict[str, Any]:
        await backend.open()
        try:
            return await backend.summarize(since=since, by=by)
        finally:
            await backend.close()
    return asyncio.run(read())
