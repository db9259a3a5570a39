"""API keys: who may call the gateway, which models each key may use, per-key limits.

Settings (``plugins.auth``)::

    plugins:
      auth:
        admin_key_sha256: 9f86d0...        # or admin_key: ${FLOODGATE_ADMIN_KEY}
        keys:
          - {name: shop-bot, key: "${SHOP_BOT_KEY}", models: ["deepseek-*", gpt-4.1-mini]}
          - name: analytics
            sha256: 2c26b4...              # hex SHA-256 of the secret: the file holds no secret
            priority: 10
            rate_limit: {requests_per_second: 5, burst: 10}
            budget: {daily_usd: 20}

Clients send their key as ``Authorization: Bearer <key>`` (what every OpenAI SDK
does) or in an ``api-key`` header (what the Azure OpenAI SDKs send). Secrets are
only kept as SHA-256 digests and compared with :func:`hmac.compare_digest`; no
key, nor any part of one, ever appears in a message, log line or metric label:
callers are known by their key's ``name``.

Without any key configured (no ``plugins.auth`` block, or no ``keys`` and no
admin key) the plugin does nothing and callers are anonymous (the core's
default). With only an admin key, the OpenAI endpoints stay open and only the
admin endpoints (``/-/...``) need that key.

The admin key authenticates as ``Principal(name="admin", admin=True)`` on every
endpoint; the core's ``require_admin`` lets only it (or, without auth, the
anonymous caller) into admin endpoints.

``floodgate key new --name NAME`` prints a fresh key and its config entry.

Metric: ``floodgate_auth_requests_total{key, outcome}``: ``key`` is the key's
name (``-`` when unknown or missing), ``outcome`` one of ``ok``, ``missing``,
``invalid``, ``forbidden_model``.

The ``models`` list is also checked on passthrough endpoints (other ``/v1/*``
paths, whose bodies the core does not parse): a JSON body's ``model`` must be
allowed, and a body that is not JSON (e.g. a multipart upload) is refused for a
key with a list, since its model cannot be checked.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import hmac
import logging
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import orjson
from prometheus_client import CollectorRegistry, Counter
from pydantic import Field, SecretStr, field_validator

import proxy

log = logging.getLogger("floodgate.auth")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")
_NAME_RULE = "must be 1-64 characters: letters, digits and . _ : @ - (starting with a letter or digit)"
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
#: Names the plugin (or the core) uses for other callers.
_RESERVED_NAMES = frozenset({"admin", "anonymous", "-"})
MIN_KEY_LENGTH = 8
KEY_PREFIX = "fg-"

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


def _secret(value: Any) -> Any:
    """Check a secret without ever echoing it (pydantic's messages quote the input)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string (quote it in YAML)")
    if len(value) < MIN_KEY_LENGTH:
        raise ValueError(f"must be at least {MIN_KEY_LENGTH} characters"
                         + (" (is its environment variable set?)" if not value else ""))
    return value


def _digest_hex(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX64_RE.match(value):
        raise ValueError("must be 64 hex characters (the SHA-256 of the key, e.g. from `floodgate key new`)")
    return value.lower()


class RateLimitOverride(proxy.Settings):
    """Per-key limits; each overrides the ratelimit plugin's per-key default."""

    requests_per_second: PositiveFloat | None = None
    burst: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None


class BudgetOverride(proxy.Settings):
    """Per-key spending caps in US dollars (enforced by the cost plugin)."""

    daily_usd: NonNegativeFloat | None = None
    monthly_usd: NonNegativeFloat | None = None


class KeySettings(proxy.Settings):
    """One client key: exactly one of ``key`` or ``sha256``."""

    name: str
    key: SecretStr | None = None
    sha256: str | None = None
    models: list[Annotated[str, Field(min_length=1)]] | None = None
    priority: int | None = None
    rate_limit: RateLimitOverride | None = None
    budget: BudgetOverride | None = None
    force_tier: bool | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise ValueError(_NAME_RULE)
        if value in _RESERVED_NAMES:
            raise ValueError(f"{value!r} is reserved; choose another name")
        return value

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value: Any) -> Any:
        return _secret(value)

    @field_validator("sha256", mode="before")
    @classmethod
    def _sha256(cls, value: Any) -> Any:
        return _digest_hex(value)

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must list at least one model name or glob (leave it out to allow every model)")
        return value


class AuthSettings(proxy.Settings):
    keys: list[KeySettings] = Field(default_factory=list)
    admin_key: SecretStr | None = None
    admin_key_sha256: str | None = None

    @field_validator("admin_key", mode="before")
    @classmethod
    def _key(cls, value: Any) -> Any:
        return _secret(value)

    @field_validator("admin_key_sha256", mode="before")
    @classmethod
    def _sha256(cls, value: Any) -> Any:
        return _digest_hex(value)


def sha256_digest(secret: str) -> bytes:
    """The SHA-256 digest of a key as used in ``sha256:`` (its hex form)."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _model_matcher(patterns: list[str]) -> Callable[[str], bool]:
    """A predicate for "this model is allowed": exact names by set lookup, globs by one regex."""
    exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    globs = [p for p in patterns if p not in exact]
    if not globs:
        return exact.__contains__
    rx = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))
    match = rx.match
    return lambda model: model in exact or match(model) is not None


class _Key:
    """A configured key, precomputed: its digest, principal and model predicate."""

    __slots__ = ("allowed", "digest", "principal")

    def __init__(self, digest: bytes, principal: proxy.Principal,
                 allowed: Callable[[str], bool] | None) -> None:
        self.digest = digest
        self.principal = principal
        self.allowed = allowed


def _principal_settings(entry: KeySettings) -> dict[str, Any]:
    """The per-key overrides other plugins read (``Principal.settings``); only the ones set.

    Keys: ``models`` (tuple), ``priority`` (int), ``rate_limit`` and ``budget`` (dicts of the
    fields set), ``force_tier`` (bool). Built once per key; readers treat it as read-only.
    """
    settings: dict[str, Any] = {}
    if entry.models is not None:
        settings["models"] = tuple(entry.models)
    if entry.priority is not None:
        settings["priority"] = entry.priority
    if entry.rate_limit is not None:
        settings["rate_limit"] = entry.rate_limit.model_dump(exclude_none=True)
    if entry.budget is not None:
        settings["budget"] = entry.budget.model_dump(exclude_none=True)
    if entry.force_tier is not None:
        settings["force_tier"] = entry.force_tier
    return settings


class AuthPlugin:
    """Checks API keys; fills ``ctx.principal`` with the key's name and per-key settings."""

    name = "auth"

    def __init__(self) -> None:
        self.keys: dict[bytes, _Key] = {}  # by SHA-256 digest; the admin key included
        self.enabled = False
        self.open_api = True  # only an admin key: the OpenAI endpoints stay anonymous
        self.requests: Any = None

    # -- configuration ------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        settings = config.plugin_settings(self.name, AuthSettings)
        base = ("plugins", self.name)
        errors: list[proxy.ConfigError] = []
        keys: dict[bytes, _Key] = {}
        owner: dict[bytes, str] = {}  # digest -> "keys.N" (to name duplicates without the secret)
        names: dict[str, int] = {}

        def digest_of(secret: SecretStr | None, hex_digest: str | None, path: tuple[Any, ...],
                      key_field: str, sha_field: str) -> bytes | None:
            if secret is not None and hex_digest is not None:
                errors.append(config.error((*path, sha_field), f"set either {key_field} or {sha_field}, not both"))
                return None
            if secret is not None:
                digest = sha256_digest(secret.get_secret_value())
                where = (*path, key_field)
            elif hex_digest is not None:
                digest = bytes.fromhex(hex_digest)
                where = (*path, sha_field)
            else:
                return None
            label = ".".join(map(str, where[len(base):]))
            if digest in owner:
                errors.append(config.error(where, f"the same secret as {owner[digest]}; every key needs its own"))
                return None
            owner[digest] = label
            return digest

        admin_digest = digest_of(settings.admin_key, settings.admin_key_sha256, base, "admin_key",
                                 "admin_key_sha256")
        for i, entry in enumerate(settings.keys):
            path = (*base, "keys", i)
            if entry.name in names:
                errors.append(config.error((*path, "name"), f"duplicate key name {entry.name!r} "
                                           f"(also keys.{names[entry.name]}.name)"))
            else:
                names[entry.name] = i
            if entry.key is None and entry.sha256 is None:
                errors.append(config.error(path, "needs either key (the secret) or sha256 (its digest)"))
                continue
            digest = digest_of(entry.key, entry.sha256, path, "key", "sha256")
            if digest is None:
                continue
            principal = proxy.Principal(name=entry.name, settings=_principal_settings(entry), admin=False)
            allowed = _model_matcher(entry.models) if entry.models is not None else None
            keys[digest] = _Key(digest, principal, allowed)
        if errors:
            raise proxy.ConfigErrors(errors)

        if admin_digest is not None:
            keys[admin_digest] = _Key(admin_digest, proxy.Principal(name="admin", admin=True), None)
        self.keys = keys
        self.enabled = bool(keys)
        self.open_api = not settings.keys
        self.requests = proxy.LabelCache(Counter(
            "floodgate_auth_requests", "Authentication outcomes by key name (never the key)",
            ["key", "outcome"], registry=registry))

    # -- per request ----------------------------------------------------------
    @proxy.hookimpl
    def proxy_authenticate(self, ctx: proxy.RequestContext) -> proxy.Principal | None:
        if not self.enabled:
            return None
        is_admin_endpoint = ctx.endpoint.startswith("-/")
        if self.open_api and not is_admin_endpoint:
            return None
        secret = _presented_key(ctx.headers)
        if not secret:
            self.requests("-", "missing").inc()
            raise proxy.Rejection(
                401, "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
                "(Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key", headers=_CHALLENGE, should_retry=False)
        digest = sha256_digest(secret)
        entry = self.keys.get(digest)
        # The dict is keyed by digest, so timing can only tell a digest's hash bucket, never
        # the secret; the constant-time comparison guards the final equality anyway.
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            self.requests("-", "invalid").inc()
            log.debug("request %s: unknown API key", ctx.request_id)
            raise proxy.Rejection(401, "Incorrect API key provided. Check the key this client is configured "
                                  "with.", code="invalid_api_key", headers=_CHALLENGE, should_retry=False)
        principal = entry.principal
        if entry.allowed is not None:
            model = ctx.model
            if model is None and ctx.endpoint.startswith("passthrough:") and ctx.raw:
                model = _passthrough_model(ctx.raw)
            if model is not None and not entry.allowed(model):
                self.requests(principal.name, "forbidden_model").inc()
                raise proxy.Rejection(
                    403, f"The API key {principal.name!r} is not allowed to use the model `{model[:200]}`."
                    if model else f"The API key {principal.name!r} is limited to some models and this "
                    "request's model cannot be checked (only JSON bodies can).",
                    code="model_not_allowed", param="model", should_retry=False)
        self.requests(principal.name, "ok").inc()
        return principal

    # -- command line ---------------------------------------------------------
    @proxy.hookimpl
    def proxy_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        key = subparsers.add_parser("key", help="create API keys for the auth plugin",
                                    description="Manage the API keys clients use (plugins.auth.keys).")
        sub = key.add_subparsers(dest="key_command", metavar="SUBCOMMAND")
        new = sub.add_parser(
            "new", help="print a fresh random key and its config entry",
            description="Print a new random API key and the plugins.auth.keys entry that accepts it. "
                        "The entry holds only the key's SHA-256, so the config file needs no secret. "
                        "The key is shown once: hand it to the client now.")
        new.add_argument("--name", required=True, help="the key's name (shown in logs and metrics)")
        new.set_defaults(func=_cmd_key_new)
        key.set_defaults(func=lambda args: (key.print_help(), 2)[1])


_CHALLENGE: Mapping[str, str] = {"WWW-Authenticate": 'Bearer realm="floodgate"'}


def _presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer <key>``, else from ``api-key`` (Azure SDKs)."""
    value = headers.get("Authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip() or None
        return None
    value = headers.get("api-key")
    return value.strip() if value else None


def _passthrough_model(raw: bytes) -> str | None:
    """The ``model`` of a passthrough body; ``""`` (never allowed) when it cannot be read.

    The core does not parse other ``/v1/*`` bodies, so a key limited to some models
    would otherwise reach any model through them. Fail closed: a body that is not
    JSON (e.g. a multipart audio upload) cannot be checked.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) or model is None else ""


def new_key() -> str:
    """A fresh random API key: ``fg-`` and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _cmd_key_new(args: argparse.Namespace) -> int:
    name: str = args.name
    problem = (_NAME_RULE if not _NAME_RE.match(name) else
               "is reserved; choose another name" if name in _RESERVED_NAMES else None)
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


floodgate_plugin = AuthPlugin
