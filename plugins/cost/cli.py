"""``floodgate usage``: the usage ledger summarised on the command line."""

from __future__ import annotations

import argparse
import sqlite3
import sys

import orjson

import proxy

from .plugin import CostPlugin
from .report import GROUPS, format_table, parse_since, read_report
from .schema import MEMORY
from .settings import CostSettings, ledger_path

__all__ = ["add_usage_command", "usage_command"]


def add_usage_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "usage", help="summarise the usage ledger",
        description="Requests, tokens and cost from the cost plugin's usage ledger "
                    "(plugins.cost.ledger.path in the config), grouped by key, model, route or day.")
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


def usage_command(args: argparse.Namespace) -> int:
    """``floodgate usage``: print the ledger summary (table or JSON)."""
    try:
        config = proxy.load_config(args.config)
        settings = config.plugin_settings(CostPlugin.name, CostSettings)
        path = ledger_path(config, settings.ledger) if settings.ledger.enabled else MEMORY
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
    if not settings.ledger.enabled:
        print("error: the usage ledger is disabled (plugins.cost.ledger.enabled: false)", file=sys.stderr)
        return 1
    if path == MEMORY:
        print("error: an in-memory ledger (:memory:) can only be read through GET /-/usage", file=sys.stderr)
        return 1
    try:
        report = read_report(path, since=args.since, by=args.by)
    except FileNotFoundError:
        print(f"error: no usage ledger at {path} (nothing recorded yet?)", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:
        print(f"error: cannot read the usage ledger {path}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_table(report))
    return 0
