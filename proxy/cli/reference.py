"""``floodgate config reference``: the configuration reference of the core and the plugins loaded."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from ..config.reference import core_sections, plugin_section, render, settings_models
from ..errors import ConfigError
from ..loader import BUILTIN_PLUGINS, build_plugin_manager


def reference(*, entry_points: bool = False, modules: Iterable[str] = ()) -> tuple[str, list[ConfigError]]:
    """The reference as markdown: the core's sections, then ``plugins.<name>`` of every plugin that
    declares a ``settings_model`` (built-ins, entry points if asked, then ``modules``), and the
    errors met loading them."""
    pm, _, errors = build_plugin_manager(core=[], builtins=BUILTIN_PLUGINS, entry_points=entry_points,
                                         modules=modules)
    plugins = [plugin_section(name, model) for name, model in settings_models(pm.list_name_plugin())]
    return render([*core_sections(), *plugins]), errors


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``floodgate config reference``."""
    config = sub.add_parser("config", help="about the configuration file",
                            description="Commands about config.yaml.")
    commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    ref = commands.add_parser(
        "reference", help="print the reference of every setting (docs/configuration.md)",
        description="Print every key config.yaml accepts — the core's sections, then each plugin's block "
                    "— with its type, default and meaning, rendered from the settings models.")
    ref.add_argument("--output", "-o", metavar="PATH", help="write it to PATH instead of standard output")
    ref.add_argument("--plugin", action="append", default=[], metavar="REF",
                     help="also document this plugin (package.module or package.module:Attribute); repeatable")
    ref.add_argument("--no-entry-points", action="store_true",
                     help="leave out plugins installed through the floodgate entry-point group "
                          "(the repository's docs/configuration.md is made so)")
    ref.set_defaults(func=cmd_reference)


def cmd_reference(args: argparse.Namespace) -> int:
    text, errors = reference(entry_points=not args.no_entry_points, modules=args.plugin)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        return 1
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
