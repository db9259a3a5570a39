"""The ``floodgate`` command line: serve, check, mock-upstream, and plugin commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .config import Config, load_config
from .errors import ConfigErrors
from .hooks import Hooks
from .loader import BUILTIN_PLUGINS, build_plugin_manager

DEFAULT_CONFIG = os.environ.get("FLOODGATE_CONFIG", "config.yaml")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` (default: ``$FLOODGATE_CONFIG`` or ``config.yaml``)."""
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"the configuration file (default: {DEFAULT_CONFIG})")


def load_or_report(path: str) -> Config | None:
    """Load and fully validate a config (plugins included); print errors and return None on failure."""
    from .app import create_app

    try:
        config = load_config(path)
        create_app(config)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        count = len(exc.errors)
        print(f"{path}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return None
    return config


def _cmd_check(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return 1
    print(f"{args.config}: OK — {len(config.upstreams)} upstream(s), {len(config.models)} model(s), "
          f"{len(config.aliases)} alias(es)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    config = load_or_report(args.config)
    if config is None:
        return 1
    return serve(config, host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floodgate",
        description="Floodgate: an OpenAI-compatible LLM gateway. Point any OpenAI SDK's base_url at it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway",
                           description="Run the gateway on the given config. With the shipped config the "
                                       "built-in mock upstream starts in-process: no network or API key needed.")
    add_config_option(serve)
    serve.add_argument("--host", help="listen address (default: server.host from the config)")
    serve.add_argument("--port", type=int, help="listen port (default: server.port from the config)")
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check", help="validate a config file and exit",
                           description="Validate the config (every section and every plugin's block). "
                                       "Prints each error with its file, line and key path; exit status 1 on error.")
    add_config_option(check)
    check.set_defaults(func=_cmd_check)

    # Plugin commands (built-ins and entry points; config-listed modules need a config first).
    pm, _, errors = build_plugin_manager(core=[], builtins=BUILTIN_PLUGINS)
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    Hooks(pm).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
