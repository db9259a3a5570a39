"""The ``floodgate`` command line.

The core adds ``serve``, ``check`` and ``reload`` (``commands``) and ``config reference``
(``reference``); every other command comes
from a plugin's ``proxy_add_commands``: the built-ins (``usage``, ``route``,
``key``) and the tools registered as entry points (``mock-upstream``,
``loadtest``, ``demo``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..hooks import Hooks
from ..loader import BUILTIN_PLUGINS, build_plugin_manager
from . import reference
from .commands import add_config_option, cmd_check, cmd_reload, cmd_serve, workers_option

__all__ = ["add_config_option", "build_parser", "main"]


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
    serve.add_argument("--workers", type=workers_option, metavar="N",
                       help="worker processes sharing the port, or 'auto' for one per CPU (default: server.workers "
                            "from the config); more than 1 needs state.backend: redis")
    serve.set_defaults(func=cmd_serve)

    reload = sub.add_parser("reload", help="make a running gateway reload its config",
                            description="Validate the config as `check` does, then send SIGHUP to the gateway "
                                        "whose pid is in server.pid_file. The gateway validates again, switches "
                                        "to it without dropping requests, and logs the outcome; on any error it "
                                        "keeps its running config.")
    add_config_option(reload)
    reload.add_argument("--pid-file", metavar="PATH", help="the running gateway's pid file "
                                                            "(default: server.pid_file from the config)")
    reload.add_argument("--workers", type=workers_option, metavar="N",
                        help="the running gateway's worker count, if not server.workers")
    reload.set_defaults(func=cmd_reload)

    check = sub.add_parser("check", help="validate a config file and exit",
                           description="Validate the config (every section and every plugin's block). "
                                       "Prints each error with its file, line and key path; exit status 1 on error.")
    add_config_option(check)
    check.set_defaults(func=cmd_check)
    reference.add_parser(sub)

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
