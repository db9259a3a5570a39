"""The core's own commands: ``floodgate serve`` and ``floodgate check``."""

from __future__ import annotations

import argparse
import os
import sys

from ..config import Config, load_config
from ..errors import ConfigErrors

DEFAULT_CONFIG = os.environ.get("FLOODGATE_CONFIG", "config.yaml")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` (default: ``$FLOODGATE_CONFIG`` or ``config.yaml``)."""
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"the configuration file (default: {DEFAULT_CONFIG})")


def load_or_report(path: str) -> Config | None:
    """Load and fully validate a config (plugins included); print errors and return None on failure."""
    from ..app import create_app

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


def cmd_check(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return 1
    print(f"{args.config}: OK — {len(config.upstreams)} upstream(s), {len(config.models)} model(s), "
          f"{len(config.aliases)} alias(es)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server import serve

    config = load_or_report(args.config)
    if config is None:
        return 1
    return serve(config, host=args.host, port=args.port)


