"""``floodgate demo``: its options, ``run``, and the plugin that adds the command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from proxy import add_config_option
from proxy.hookspecs import hookimpl

from .printer import Printer
from .script import _run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``floodgate demo`` options to ``parser``."""
    add_config_option(parser)
    parser.add_argument("--no-colour", "--no-color", dest="colour", action="store_false",
                        help="plain output even on a terminal")


def run(args: argparse.Namespace) -> int:
    printer = Printer(colour=args.colour and sys.stdout.isatty())
    return asyncio.run(_run(Path(args.config), printer))


class DemoCommands:
    """Adds ``floodgate demo``; registered through the ``floodgate`` entry-point group
    (no per-request hooks, so a gateway that loads it pays nothing for it)."""

    name = "demo"

    @hookimpl
    def proxy_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser(
            "demo", help="see every plugin at work (mock upstream, no network)",
            description="Start the mock upstream and the gateway on free local ports with the shipped config, "
                        "send a scripted set of requests through the openai SDK and show what happened to "
                        "each, then the cost table.")
        add_arguments(parser)
        parser.set_defaults(func=run)

