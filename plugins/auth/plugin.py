"""The auth plugin: keys compiled for the hot path and the ``proxy_authenticate`` hook."""

from __future__ import annotations

import argparse
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

import proxy

from .cli import add_key_command
from .settings import AuthSettings, sha256_digest

__all__ = ["AuthPlugin"]

log = logging.getLogger("floodgate.auth")


class _Key:
    """A configured key, precomputed: its digest and principal."""

    __slots__ = ("digest", "principal")

    def __init__(self, digest: bytes, principal: proxy.Principal) -> None:
        self.digest = digest
        self.principal = principal


class AuthPlugin:
    """Checks API keys; fills ``ctx.principal`` with the key's name and per-key settings."""

    name = "auth"
    settings_model = AuthSettings

    def __init__(self) -> None:
        self.keys: dict[bytes, _Key] = {}  # by SHA-256 digest; the admin key included
        self.enabled = False
        self.open_api = True  # only an admin key: the OpenAI endpoints stay anonymous
        self.requests: Any = None

    # -- configuration ------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        settings = config.plugin_settings(self.name, self.settings_model)
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
            keys[digest] = _Key(digest, proxy.Principal(name=entry.name, policy=entry.policy()))
        if errors:
            raise proxy.ConfigErrors(errors)

        if admin_digest is not None:
            keys[admin_digest] = _Key(admin_digest, proxy.Principal(name="admin", admin=True))
        self.keys = keys
        self.enabled = bool(keys)
        self.open_api = not settings.keys
        self.requests = proxy.LabelCache(Counter(
            "floodgate_auth_requests", "Authentication outcomes by key name (never the key)",
            ["key", "outcome"], registry=registry))

    # -- per request ----------------------------------------------------------
    @proxy.hookimpl
    def proxy_authenticate(self, ctx: proxy.RequestContext) -> proxy.Principal | None:
        """Who is calling, from the headers alone (the body is not read yet)."""
        if not self.enabled:
            return None
        if self.open_api and ctx.kind is not proxy.EndpointKind.ADMIN:
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
        self.requests(entry.principal.name, "ok").inc()
        return entry.principal

    @proxy.hookimpl
    def proxy_authorize(self, ctx: proxy.RequestContext) -> None:
        """The key's model list and passthrough grant (see the module docstring)."""
        principal = ctx.principal
        policy = principal.policy
        if ctx.kind is proxy.EndpointKind.PASSTHROUGH:
            endpoint = ctx.endpoint.partition("/")[0]
            if policy.endpoints is not None:
                if not policy.allows_endpoint(endpoint, None):
                    self.requests(principal.name, "forbidden_endpoint").inc()
                    raise proxy.Rejection(
                        403, f"The API key {principal.name!r} may not use the /v1/{proxy.shorten(endpoint, 64)} "
                        "endpoints.", code="endpoint_not_allowed", param="path", should_retry=False)
            elif policy.models is not None and ctx.model is None:
                # Limited to some models, and this body names none the gateway can check.
                self.requests(principal.name, "forbidden_model").inc()
                raise proxy.Rejection(
                    403, f"The API key {principal.name!r} is limited to some models and this request's model "
                    "cannot be checked (grant the endpoint with keys[].endpoints to allow it).",
                    code="model_not_allowed", param="model", should_retry=False)
        model = ctx.model
        if model is not None and not policy.allows_model(model):
            self.requests(principal.name, "forbidden_model").inc()
            raise proxy.Rejection(
                403, f"The API key {principal.name!r} is not allowed to use the model `{proxy.shorten(model)}`.",
                code="model_not_allowed", param="model", should_retry=False)

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
