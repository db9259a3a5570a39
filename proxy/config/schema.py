"""The core sections of ``config.yaml`` as strict pydantic models.

Every section is a :class:`Settings` (``extra="forbid"``, frozen): an unknown or
misspelled key is an error naming its path and line, never silently ignored.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from ..settings import NonNegativeFloat, PositiveFloat, PositiveInt, Settings
from ..types import Usage

#: ``upstreams.<name>.base_url`` prefix of upstreams a plugin starts in-process
#: (``builtin:mock``: the mock upstream tool, through ``proxy_builtin_upstream``).
BUILTIN_SCHEME = "builtin:"
MOCK_BASE_URL = "builtin:mock"

class ClientTimeouts(Settings):
    """Seconds a client may take; slow and idle clients cost a file descriptor each."""

    headers: PositiveFloat = 10.0  # a new connection must deliver a request's headers within
    body: PositiveFloat = 30.0  # the whole request body must arrive within (from the handler's start)
    keepalive: PositiveFloat = 15.0  # an idle keep-alive connection is closed after


MAX_WORKERS = 256


class ServerSettings(Settings):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    shutdown_timeout: PositiveFloat = 30.0
    access_log: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    timeouts: ClientTimeouts = ClientTimeouts()
    #: Worker processes sharing the listening socket; ``auto`` = the CPUs this process may use.
    workers: int | Literal["auto"] = 1
    #: Where ``floodgate serve`` writes its process id (``floodgate reload`` reads it).
    pid_file: str | None = Field(None, min_length=1)
    #: ``auto``: uvloop when installed (the ``fast`` extra), else asyncio's loop.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
            raise ValueError(f"must be 'auto' or a whole number from 1 to {MAX_WORKERS}")
        return value

    @field_validator("event_loop")
    @classmethod
    def _event_loop(cls, value: str) -> str:
        if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("uvloop is not installed here (pip install 'floodgate[fast]'), or use 'auto'")
        return value

    @property
    def worker_count(self) -> int:
        """``workers`` resolved: ``auto`` is the number of CPUs this process may run on."""
        if self.workers != "auto":
            return self.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Timeouts(Settings):
    """Seconds; each bounds one thing (README, "Timeouts").

    ``connect``: opening the connection. ``first_byte``: from sending the request
    to the first meaningful answer, one budget, headers included (streams: the first
    event carrying content, a tool call, a refusal or a finish; otherwise the
    response headers). ``stall``: the longest gap between two stream events.
    ``total``: the whole attempt.
    """

    connect: PositiveFloat = 10.0
    first_byte: PositiveFloat = 60.0
    stall: PositiveFloat = 30.0
    total: PositiveFloat = 600.0


@dataclass(frozen=True, slots=True)
class AttemptTimeouts:
    """The resolved timeouts of one attempt, in seconds (see :class:`Timeouts`)."""

    connect: float
    first_byte: float
    stall: float
    total: float

    def capped(self, cap: float) -> AttemptTimeouts:
        """These timeouts, none longer than ``cap`` (a deadline's time left)."""
        cap = max(cap, 0.001)
        if cap >= self.first_byte and cap >= self.total and cap >= self.stall:
            return self
        return AttemptTimeouts(self.connect, min(self.first_byte, cap), min(self.stall, cap), min(self.total, cap))


class TimeoutOverrides(Settings):
    connect: PositiveFloat | None = None
    first_byte: PositiveFloat | None = None
    stall: PositiveFloat | None = None
    total: PositiveFloat | None = None


class UpstreamSettings(Settings):
    base_url: str
    api_key: SecretStr | None = None
    timeouts: Timeouts = Timeouts()
    pool_size: PositiveInt = 100
    stream_options: bool = Field(True, description="whether it accepts stream_options.include_usage")
    headers: dict[str, str] = {}
    # Options of a ``builtin:`` upstream, validated by the plugin that serves it.
    mock: dict[str, Any] | None = None

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key(cls, value: Any) -> Any:
        return None if value == "" else value  # "${KEY:-}" with KEY unset: no key

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", BUILTIN_SCHEME)):
            raise ValueError(f"must be an http(s):// URL or {MOCK_BASE_URL!r}")
        return value.rstrip("/")

    @property
    def is_builtin(self) -> bool:
        """Served by a plugin in-process (``builtin:<kind>``), not at a URL."""
        return self.base_url.startswith(BUILTIN_SCHEME)


class Price(Settings):
    """US dollars per million tokens."""

    input: NonNegativeFloat = 0.0
    output: NonNegativeFloat = 0.0
    cached_input: NonNegativeFloat | None = None

    def cost(self, usage: Usage) -> float:
        """US dollars for ``usage``: cached prompt tokens at ``cached_input`` when
        it is set (else at ``input``), the rest of the prompt at ``input``, the
        completion at ``output``."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((usage.prompt_tokens - cached) * self.input + cached * cached_price
                + usage.completion_tokens * self.output) / 1_000_000


#: Names of deployments (and of other things sent in headers and used as metric labels).
DEPLOYMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class DeploymentLimits(Settings):
    """What the provider allows one deployment (its key on its model), as the provider states it.

    The catalogue only records them; the rate limiter enforces them (and learns the provider's
    own figures from its ``x-ratelimit-*`` headers, never going above these).
    """

    requests_per_minute: PositiveFloat | None = None
    tokens_per_minute: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None


class DeploymentSettings(Settings):
    """One deployment of a catalogue model: an upstream (its own base URL and key) and the model id
    the provider knows it by, with the provider's limits for it, a weight and, if it differs from
    the entry's, a price.

    ``name`` defaults to the upstream's name; it is unique within the entry, and is sent in
    ``x-floodgate-deployment``, recorded in the ledger and used as a metric label.
    ``adaptive: true`` lets the rate limiter find the deployment's real concurrency below
    ``limits.max_concurrent`` (which it then needs: the most it will try).
    """

    name: str | None = Field(None, pattern=DEPLOYMENT_NAME)
    upstream: str
    upstream_model: str | None = None
    weight: PositiveFloat = 1.0
    price: Price | None = None  # left out: the entry's price; ``null``: unpriced
    limits: DeploymentLimits = DeploymentLimits()
    adaptive: bool = False

    @property
    def key(self) -> str:
        """Its name within the entry (the upstream's name unless it has one of its own)."""
        return self.name or self.upstream

    @model_validator(mode="after")
    def _adaptive_bound(self) -> DeploymentSettings:
        if self.adaptive and self.limits.max_concurrent is None:
            raise ValueError("adaptive: true needs limits.max_concurrent (the most requests in flight it may try)")
        return self


class ModelSettings(Settings):
    """One catalogue entry: an exact model name, or a pattern (``gpt-*``) serving every name it
    matches (see :mod:`proxy.config.patterns`).

    ``price: null`` marks the entry unpriced (its usage is recorded, its cost unknown); a
    pattern entry must say which (a price, or ``null``), an exact one defaults to zero.

    An entry is served by one ``upstream``, or by several ``deployments`` (the same model on
    several provider keys, accounts or regions); ``upstream`` is then its first deployment's.
    """

    upstream: str
    upstream_model: str | None = None
    deployments: list[DeploymentSettings] = []
    timeouts: TimeoutOverrides = TimeoutOverrides()
    price: Price | None = Price()
    fallbacks: list[str] = []
    kind: Literal["chat", "embedding", "completion"] = "chat"

    @model_validator(mode="before")
    @classmethod
    def _one_way_to_serve(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("deployments"):
            return data
        if "upstream" in data:
            raise ValueError("give either upstream (one deployment) or deployments, not both")
        first = data["deployments"][0] if isinstance(data["deployments"], list) else None
        if isinstance(first, dict) and isinstance(first.get("upstream"), str):
            return {**data, "upstream": first["upstream"]}
        return data

    def deployment(self, name: str | None) -> DeploymentSettings | None:
        """The deployment called ``name`` (``None``: an entry without deployments)."""
        if name is None:
            return None
        return next((d for d in self.deployments if d.key == name), None)

    def price_of(self, deployment: str | None) -> Price | None:
        """The price of a deployment: its own when it sets one, else the entry's."""
        found = self.deployment(deployment)
        if found is not None and "price" in found.model_fields_set:
            return found.price
        return self.price


class PluginsSection(Settings):
    model_config = ConfigDict(extra="allow", frozen=True)
    modules: list[str] = []
    disabled: list[str] = []


_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)*$")


class StateTimeouts(Settings):
    """Seconds. A Redis command that takes longer counts as a failure (degraded mode)."""

    connect: PositiveFloat = 1.0
    command: PositiveFloat = 0.5


class StateSettings(Settings):
    """Where state that must see all traffic lives (buckets, leases, budgets, breakers)."""

    backend: Literal["memory", "redis"] = "memory"
    #: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or ``unix:///path``. Never logged.
    url: SecretStr | None = None
    key_prefix: str = Field("floodgate", min_length=1, max_length=64)
    #: What requests that need shared state get while Redis is unreachable: each worker's
    #: local share of every limit (``local``), or 503 with ``retry-after`` (``reject``).
    on_error: Literal["local", "reject"] = "local"
    #: Gateway hosts sharing this Redis: while it is unreachable each worker enforces
    #: limit ÷ (hosts × workers), so the fleet together stays within each limit.
    hosts: PositiveInt = 1
    pool_size: PositiveInt = 64
    timeouts: StateTimeouts = StateTimeouts()
    #: Seconds between health checks while Redis answers (``/readyz`` notices an outage even
    #: without traffic); while it does not, probes start at 0.1 s and back off to this.
    check_interval: PositiveFloat = 2.0

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not text.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")  # the value may hold a password
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _KEY_PREFIX.match(value):
            raise ValueError("must be letters, digits, '_', '.', '-', in parts joined by ':'")
        return value

    @model_validator(mode="after")
    def _url_for_redis(self) -> StateSettings:
        if self.backend == "redis" and self.url is None:
            raise ValueError("backend redis needs a url (e.g. redis://127.0.0.1:6379/0)")
        return self


class CoreSettings(Settings):
    server: ServerSettings = ServerSettings()
    state: StateSettings = StateSettings()
    upstreams: dict[str, UpstreamSettings] = Field(min_length=1)
    models: dict[str, ModelSettings] = {}
    aliases: dict[str, str] = {}
    plugins: PluginsSection = PluginsSection()


