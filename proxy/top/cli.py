"""``floodgate status``: the running gateway's ``GET /-/status``, refreshed like ``top``.

Plain ANSI escapes, no curses: the alternate screen while it runs, the cursor hidden,
both restored on exit — Ctrl-C included. ``--once`` prints one frame (no escapes
unless stdout is a terminal) and exits 0, or 1 if the gateway could not be read;
``--json`` prints the document itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

from proxy.hookspecs import hookimpl

from .view import render

__all__ = ["StatusCommands", "fetch", "run"]

_ENTER, _LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"
_HOME = "\x1b[H\x1b[2J"


def fetch(url: str, key: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """The status document at ``url`` (``.../-/status``). Raises ``OSError``/``ValueError`` with a
    message fit to show (the key never appears in it)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except Exception:
            message = exc.reason
        raise OSError(f"HTTP {exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None
    if not isinstance(data, dict):
        raise ValueError("the status is not a JSON object")
    return data


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    host, port = "127.0.0.1", 8080
    if args.config and os.path.exists(args.config):
        from proxy.config import load_config

        server = load_config(args.config).server
        host, port = server.host, server.port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    base = _base_url(args)
    url = base + "/-/status"
    key = args.key or os.environ.get("FLOODGATE_ADMIN_KEY")

    def frame() -> tuple[str, bool]:
        try:
            doc, error = fetch(url, key), None
        except (OSError, ValueError) as exc:
            doc, error = None, str(exc)
        if args.json:
            return (json.dumps(doc, indent=2) + "\n" if doc is not None else f"error: {error}\n"), doc is not None
        width = shutil.get_terminal_size((160, 40)).columns
        return render(doc, source=base, error=error, width=width, colour=out.isatty()), doc is not None

    if args.once or args.json:
        text, ok = frame()
        out.write(text)
        return 0 if ok else 1
    out.write(_ENTER)
    try:
        while True:
            text, _ = frame()
            out.write(_HOME + text + f"\n(refreshing every {args.interval:g} s; Ctrl-C to quit)")
            out.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        out.write(_LEAVE)
        out.flush()


class StatusCommands:
    """Adds ``floodgate status`` (registered through the ``floodgate`` entry-point group)."""

    name = "status"

    @hookimpl
    def proxy_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser(
            "status", help="live status of a running gateway, per route and deployment (like top)",
            description="Show a running gateway's GET /-/status (admin key) per route and per deployment: "
                        "requests/s, in flight, queue and predicted wait, overload step in force, breakers, "
                        "learned limits, cost per minute; refreshed until Ctrl-C.")
        parser.add_argument("--url", help="the gateway's base URL (default: server.host/port of --config)")
        parser.add_argument("--config", "-c", default=os.environ.get("FLOODGATE_CONFIG", "config.yaml"),
                            metavar="PATH", help="config to read the address from (default: %(default)s)")
        parser.add_argument("--key", help="the admin key (default: $FLOODGATE_ADMIN_KEY)")
        parser.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between frames")
        parser.add_argument("--once", action="store_true", help="print one frame and exit")
        parser.add_argument("--json", action="store_true", help="print the status document as JSON and exit")
        parser.set_defaults(func=run)
