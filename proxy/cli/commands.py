"""The core's own commands: ``floodgate serve``, ``floodgate check`` and ``floodgate reload``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..config import Config, parse_config
from ..errors import ConfigError, ConfigErrors

DEFAULT_CONFIG = os.environ.get("FLOODGATE_CONFIG", "config.yaml")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` (default: ``$FLOODGATE_CONFIG`` or ``config.yaml``)."""
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"the configuration file (default: {DEFAULT_CONFIG})")


def workers_option(value: str) -> int | str:
    """``--workers``: a whole number from 1, or ``auto``."""
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be 'auto' or a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def load_or_report(path: str, workers: int | str | None = None) -> tuple[Config, str] | None:
    """Read and fully validate a config (plugins included) for ``workers`` processes
    (default: ``server.workers``); print errors and return None on failure.

    Returns the config and the text it was read from (what worker processes get).
    """
    from ..server.reload import validate

    try:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigErrors([ConfigError("", f"cannot read config: {exc.strerror}", source=path)]) from None
        config = parse_config(text, source=Path(path).name)
        validate(config, worker_count(config, workers))
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        count = len(exc.errors)
        print(f"{path}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return None
    return config, text


def worker_count(config: Config, override: int | str | None) -> int:
    """The worker processes to run: ``--workers`` if given, else ``server.workers`` (``auto`` = CPUs)."""
    if override is None:
        return config.server.worker_count
    if override == "auto":
        return config.server.model_copy(update={"workers": "auto"}).worker_count
    return int(override)


def cmd_check(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.config)
    if loaded is None:
        return 1
    config = loaded[0]
    print(f"{args.config}: OK — {len(config.upstreams)} upstream(s), {len(config.models)} model(s), "
          f"{len(config.aliases)} alias(es)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server import serve, supervise
    from ..server.pidfile import PidFileError

    loaded = load_or_report(args.config, args.workers)
    if loaded is None:
        return 1
    config, text = loaded
    workers = worker_count(config, args.workers)
    try:
        if workers == 1:
            return serve(config, path=args.config, host=args.host, port=args.port)
        return supervise(config, path=args.config, text=text, workers=workers, host=args.host, port=args.port)
    except PidFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate the config as ``check`` does, then send SIGHUP to the running gateway."""
    from ..server.pidfile import PidFileError, read_pid

    loaded = load_or_report(args.config, args.workers)
    if loaded is None:
        print("not reloaded: the running gateway keeps its configuration", file=sys.stderr)
        return 1
    pid_path = args.pid_file or loaded[0].server.pid_file
    if pid_path is None:
        print(f"error: {args.config}: server.pid_file is not set, so the running gateway cannot be found "
              "(set it, or pass --pid-file)", file=sys.stderr)
        return 1
    try:
        pid = read_pid(pid_path)
        os.kill(pid, signal.SIGHUP)
    except PidFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"error: not allowed to signal the gateway (pid {pid})", file=sys.stderr)
        return 1
    print(f"{args.config}: OK — sent SIGHUP to the gateway (pid {pid}); it validates the file again, switches "
          "to it, and logs the outcome")
    return 0
