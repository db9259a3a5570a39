"""The auth plugin: keys compiled for the hot path and the ``proxy_authenticate`` hook."""

from __future__ import annotations

import argparse
import fnmatch
import hmac
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

import proxy

from .cli import add_key_command
from .settings import AuthSettings, KeySettings, sha256_digest

__all__ = ["AuthPlugin"]

log = logging.getLogger("floodgate.auth")


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
        add_key_command(subparsers)


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
