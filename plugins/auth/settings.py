"""The ``plugins.auth`` block: client keys, the admin key, and the names keys may have."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import Field, SecretStr, field_validator

import proxy

__all__ = ["MIN_KEY_LENGTH", "NAME_RE", "NAME_RULE", "RESERVED_NAMES", "AuthSettings", "KeySettings",
           "sha256_digest"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")
NAME_RULE = "must be 1-64 characters: letters, digits and . _ : @ - (starting with a letter or digit)"
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
#: Names the plugin (or the core) uses for other callers.
RESERVED_NAMES = frozenset({"admin", "anonymous", "-"})
MIN_KEY_LENGTH = 8


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


class KeySettings(proxy.Settings):
    """One client key: exactly one of ``key`` or ``sha256``."""

    name: str
    """Unique, safe to log: 1-64 letters, digits and `. _ : @ -`, starting with a letter or
    digit; not `admin` or `anonymous`. Logs and metrics know the caller by it."""
    key: SecretStr | None = None
    """The secret (normally `${ENV_VAR}`, at least 8 characters); give this or `sha256`."""
    sha256: str | None = None
    """The secret's hex SHA-256 (from `floodgate key new`): the file then holds no secret; give
    this or `key`."""
    models: list[proxy.NonEmptyStr] | None = None
    """Allowed models (at least one): names or globs (`deepseek-*`), matched against the name the
    client asked for; unset: all. Others get 403 `model_not_allowed` and are left out of `GET /v1/models`."""
    endpoints: list[proxy.NonEmptyStr] | None = None
    """Passthrough endpoints it may reach (the first path segment under `/v1`: `files`,
    `batches`, `responses`, ..., or `"*"`); `[]`: none. Unset: every one for a key without
    `models`; with `models`, those whose JSON body names an allowed model."""
    priority: int = 0
    """Higher waits less in the rate limiter's queue (and is shed last: the overload ladder's
    `shed_below_priority`)."""
    rate_limit: proxy.RateLimits | None = None
    """Its own limits, each overriding `plugins.ratelimit.per_key`'s."""
    budget: proxy.Budget | None = None
    """Its spending caps (UTC periods), enforced by the cost plugin; unset:
    `plugins.cost.default_budget`."""
    force_tier: bool = False
    """May pick a router tier with the `x-floodgate-tier` header (other keys sending it get
    403)."""
    degrade: bool = True
    """`false`: never served degraded under overload — the route's own models or an error, never
    a canned, cheaper or shorter answer."""

    def policy(self) -> proxy.KeyPolicy:
        """This key's :class:`proxy.KeyPolicy`, the value every other plugin reads."""
        return proxy.KeyPolicy(
            models=tuple(self.models) if self.models is not None else None,
            endpoints=tuple(self.endpoints) if self.endpoints is not None else None,
            priority=self.priority, rate_limit=self.rate_limit, budget=self.budget, force_tier=self.force_tier,
            degrade=self.degrade)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise ValueError(NAME_RULE)
        if value in RESERVED_NAMES:
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
    """API keys: who may call the gateway, which models and endpoints each key may use, its
    priority, limits and budget. With no keys and no admin key every caller is `anonymous`;
    with only an admin key the OpenAI endpoints stay open. See the
    [README](../README.md#pluginsauth--api-keys)."""

    keys: list[KeySettings] = Field(default_factory=list)
    """The client keys."""
    admin_key: SecretStr | None = None
    """The admin key (from the environment, at least 8 characters): authenticates as `admin`,
    which opens the admin endpoints (`/-/usage`, `/-/status`, the details of `/-/plugins`)."""
    admin_key_sha256: str | None = None
    """Instead of `admin_key`: its hex SHA-256."""

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
