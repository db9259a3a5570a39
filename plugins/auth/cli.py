"""``floodgate key new``: a fresh API key and the config entry that accepts it."""

from __future__ import annotations

import argparse
import re
import secrets
import sys

from .settings import NAME_RE, NAME_RULE, RESERVED_NAMES, sha256_digest

__all__ = ["KEY_PREFIX", "add_key_command", "new_key"]

KEY_PREFIX = "fg-"


def add_key_command(subparsers: argparse._SubParsersAction) -> None:
    key = subparsers.add_parser("key", help="create API keys for the auth plugin",
                                description="Manage the API keys clients use (plugins.auth.keys).")
    sub = key.add_subparsers(dest="key_command", metavar="SUBCOMMAND")
    new = sub.add_parser(
        "new", help="print a fresh random key and its config entry",
        description="Print a new random API key and the plugins.auth.keys entry that accepts it. "
                    "The entry holds only the key's SHA-256, so the config file needs no secret. "
                    "The key is shown once: hand it to the client now.")
    new.add_argument("--name", required=True, help="the key's name (shown in logs and metrics)")
    new.set_defaults(func=key_new_command)
    key.set_defaults(func=lambda args: (key.print_help(), 2)[1])


def new_key() -> str:
    """A fresh random API key: ``fg-`` and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_new_command(args: argparse.Namespace) -> int:
    name: str = args.name
    problem = (NAME_RULE if not NAME_RE.match(name) else
               "is reserved; choose another name" if name in RESERVED_NAMES else None)
    if problem:
        print(f"error: --name {problem}", file=sys.stderr)
        return 2
    key = new_key()
    digest = sha256_digest(key).hex()
    env = "FLOODGATE_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
    print(f"API key for {name!r} (shown only now; give it to the client):\n\n"
          f"    {key}\n\n"
          f"Add this entry under plugins.auth.keys in the config (it holds only the key's SHA-256):\n\n"
          f"    - {{name: {name}, sha256: {digest}}}\n\n"
          f"Or keep the secret in an environment variable instead, set {env} to the key and use:\n\n"
          f"    - {{name: {name}, key: \"${{{env}}}\"}}")
    return 0
