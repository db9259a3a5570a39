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

    headers: PositiveFloat = 10.0
    """Seconds a new connection has to deliver a request's headers; then it is closed."""
    body: PositiveFloat = 30.0
    """Seconds a request's whole body has to arrive (from when its handler starts); then 408
    `request_timeout`, and the connection is closed."""
    keepalive: PositiveFloat = 15.0
    """Seconds an idle keep-alive connection is kept open."""


MAX_WORKERS = 256


class ServerSettings(Settings):
    """The listening server and the process (``server``)."""

    host: str = "127.0.0.1"
    """Listen address."""
    port: int = Field(8080, ge=0, le=65535)
    """Listen port."""
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    """Larger request bodies get 413."""
    shutdown_timeout: PositiveFloat = 30.0
    """Seconds in-flight requests get to finish on SIGTERM."""
    access_log: bool = True
    """One line per request on the `floodgate.access` logger (request id, worker, key name, model,
    status, duration, tokens, cost; never a secret), formatted and written by a thread of its own,
    off the event loop; `false`: no access-log plugin at all."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Repeated identical warnings and errors are logged at most once per 10 s, with a count of
    those held back."""
    timeouts: ClientTimeouts = ClientTimeouts()
    """Seconds a client may take (slow and idle clients cost a file descriptor each)."""
    workers: int | Literal["auto"] = 1
    """Worker processes sharing the port, 1 to 256; `auto`: one per CPU this process may use.
    More than 1 needs `state.backend: redis`."""
    pid_file: str | None = Field(None, min_length=1)
    """Where `floodgate serve` writes its process id (the supervisor's, with workers) for
    `floodgate reload`; removed at exit."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """`auto`: uvloop when it is installed (the `fast` extra), else asyncio's loop; `asyncio` or
    `uvloop` choose (`uvloop` not installed is a config error). Takes effect at the next restart."""

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
    """Seconds; each bounds one thing, for one attempt (README, "Timeouts")."""

    connect: PositiveFloat = 10.0
    """Seconds to open the TCP (and TLS) connection."""
    first_byte: PositiveFloat = 60.0
    """Seconds from sending the request to its first meaningful answer, one budget with the
    response headers included. Streams: the first event carrying content, a tool call, a
    refusal or a finish (role-only chunks, `response.created` / `in_progress` and comments do
    not count); other requests: the response headers."""
    stall: PositiveFloat = 30.0
    """Streams: the longest silence, in seconds, between two events once the first came."""
    total: PositiveFloat = 600.0
    """Seconds for the whole attempt, from sending to the last byte."""


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
    """A catalogue entry's own timeouts; each one unset is its upstream's."""

    connect: PositiveFloat | None = None
    """Overrides the upstream's `timeouts.connect`."""
    first_byte: PositiveFloat | None = None
    """Overrides the upstream's `timeouts.first_byte`."""
    stall: PositiveFloat | None = None
    """Overrides the upstream's `timeouts.stall`."""
    total: PositiveFloat | None = None
    """Overrides the upstream's `timeouts.total`."""


class UpstreamSettings(Settings):
    """One provider endpoint: where it is, its key, its timeouts and connection pool."""

    base_url: str
    """`http(s)://.../v1`, or `builtin:mock` to start the mock upstream in-process (the trailing
    `/` is dropped)."""
    api_key: SecretStr | None = None
    """The upstream's key, sent as `Authorization: Bearer`; empty means none (so
    `${KEY:-}` with `KEY` unset sends no key). Put it in the environment."""
    timeouts: Timeouts = Timeouts()
    """Per attempt; a catalogue entry may override each (`models.<name>.timeouts`)."""
    pool_size: PositiveInt = 100
    """Pooled connections to this upstream, per worker process."""
    stream_options: bool = True
    """Whether it accepts `stream_options.include_usage`: the gateway then asks for the usage of
    every stream (hiding that chunk from clients that did not ask). `false`: the field is
    removed from requests and stream usage is estimated."""
    headers: dict[str, str] = {}
    """Extra headers sent with every request (e.g. an organisation id)."""
    mock: dict[str, Any] | None = None
    """Options of a `builtin:mock` upstream, validated by the mock (a warning, and unused, with
    another `base_url`): `tokens_per_second`, `completion_tokens`, `seed`, `quota` and
    `behaviours` per model (README, "Upstreams")."""

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
    """US dollars per million prompt tokens not served from the provider's cache."""
    output: NonNegativeFloat = 0.0
    """US dollars per million completion tokens."""
    cached_input: NonNegativeFloat | None = None
    """US dollars per million cached prompt tokens; unset: `input`."""

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

    The catalogue only records them; the rate limiter enforces them.
    """

    requests_per_minute: PositiveFloat | None = None
    """Requests per minute the provider allows; unset: no limit of this kind."""
    tokens_per_minute: PositiveInt | None = None
    """Tokens (prompt and completion) per minute the provider allows; unset: no limit."""
    max_concurrent: PositiveInt | None = None
    """Requests in flight at once; unset: no limit. With `adaptive: true`: the most it may try."""


class DeploymentSettings(Settings):
    """One deployment of a catalogue model: an upstream (its own base URL and key) and the model id
    the provider knows it by, with the provider's limits for it, a weight and, if it differs from
    the entry's, a price."""

    name: str | None = Field(None, pattern=DEPLOYMENT_NAME)
    """Unique within the entry (1-64 letters, digits, `. _ : -`); unset: the upstream's name. Sent
    in `x-floodgate-deployment`, recorded in the ledger, a metric label (`deepseek-v3.2@key-b`)."""
    upstream: str
    """The upstream (its base URL and key) serving this deployment."""
    upstream_model: str | None = None
    """The provider's model id (a template on a pattern entry); unset: the entry's
    `upstream_model`, else the model's name."""
    weight: PositiveFloat = 1.0
    """Its share under the rate limiter's `weighted` strategy (and per unit of
    `least_outstanding`)."""
    price: Price | None = None
    """Its own price, if it differs from the entry's; left out: the entry's price; `null`:
    unpriced."""
    limits: DeploymentLimits = DeploymentLimits()
    """The provider's limits for it; the rate limiter enforces them (and lowers them to what the
    provider's `x-ratelimit-*` headers say, never above these)."""
    adaptive: bool = False
    """The rate limiter finds its real concurrency (AIMD) below `limits.max_concurrent`, which
    it then needs."""

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
    matches (see :mod:`proxy.config.patterns`), served by one upstream or several deployments."""

    upstream: str
    """The upstream serving it (required unless `deployments` is given; then its first one's)."""
    upstream_model: str | None = None
    """The model id sent upstream; unset: the catalogue name (on a pattern entry, the name the
    client sent). On a pattern entry, a template: `{name}` the whole name, `{1}`, `{2}`... the
    text each `*` matched."""
    deployments: list[DeploymentSettings] = []
    """Instead of `upstream`: the same model on several provider keys, accounts or regions,
    tried in turn (README, "Deployments")."""
    timeouts: TimeoutOverrides = TimeoutOverrides()
    """Its own timeouts, each overriding its upstream's."""
    price: Price | None = Price()
    """US dollars per million tokens. `null`: unpriced (usage recorded, cost unknown); a pattern
    entry must give a price or `null`."""
    fallbacks: list[str] = []
    """Models tried after it, in order, when it fails (with the retry plugin); concrete names,
    never a pattern."""
    kind: Literal["chat", "embedding", "completion"] = "chat"
    """What the model does; the router refuses an `embedding` model in a route."""

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
    """Which plugins load; every other key is a plugin's own block (``plugins.<name>``)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    modules: list[str] = []
    """Extra plugins by reference: `package.module` (its `floodgate_plugin`, or the module) or
    `package.module:Attribute`; registered after the built-ins and entry points."""
    disabled: list[str] = []
    """Plugins blocked by name (`core` cannot be); an unknown name is an error."""


_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)*$")


class StateTimeouts(Settings):
    """Seconds. A Redis command that takes longer counts as a failure (degraded mode)."""

    connect: PositiveFloat = 1.0
    """Seconds to connect to Redis; longer counts as a failure."""
    command: PositiveFloat = 0.5
    """Seconds for one Redis command (pipelined: Redis silent while replies are due); longer fails."""


class StateSettings(Settings):
    """Where state that must see all traffic lives (buckets, leases, budgets, breakers)."""

    backend: Literal["memory", "redis"] = "memory"
    """`memory`: in this process (one process only); `redis`: in Redis, shared by every worker
    and host."""
    url: SecretStr | None = None
    """Required with `redis`: `redis://[user:password@]host:6379/0`, `rediss://` (TLS) or
    `unix:///path`. Put the password in the environment (`${REDIS_URL}`); never logged."""
    key_prefix: str = Field("floodgate", min_length=1, max_length=64)
    """Every key is `<key_prefix>:...` (letters, digits, `_ . -`, in parts joined by `:`); give
    each gateway fleet its own."""
    on_error: Literal["local", "reject"] = "local"
    """While Redis is unreachable, requests that need shared state get each worker's local share
    of every limit (`local`), or 503 with `retry-after` (`reject`)."""
    hosts: PositiveInt = 1
    """Gateway hosts sharing this Redis: while it is unreachable each worker enforces
    limit ÷ (`hosts` × workers), so the fleet together stays within each limit."""
    pool_size: PositiveInt = 64
    """Pooled Redis connections per worker, for calls off the hot path; the stores' scripts use
    one more, pipelined (`state.pipe`)."""
    timeouts: StateTimeouts = StateTimeouts()
    """Seconds; a Redis call that takes longer counts as a failure (degraded mode)."""
    check_interval: PositiveFloat = 2.0
    """Seconds between health checks while Redis answers (`/readyz` notices an outage even
    without traffic); while it does not, probes start at 0.1 s and back off to this."""

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
    """The whole file: the core's sections (each plugin validates its own ``plugins.<name>``)."""

    server: ServerSettings = ServerSettings()
    """The listening server and the process (what a reload cannot change: README, "`server`")."""
    state: StateSettings = StateSettings()
    """Where state that must see all traffic lives: rate-limit buckets and concurrency leases,
    budget reservations, circuit breakers, each kept by its plugin in a store on this backend."""
    upstreams: dict[str, UpstreamSettings] = Field(min_length=1)
    """Upstreams by name (at least one). The first one also serves passthrough paths."""
    models: dict[str, ModelSettings] = {}
    """The catalogue: client-facing model names (or patterns such as `gpt-*`) and what serves
    them."""
    aliases: dict[str, str] = {}
    """Client-facing model name → a catalogue model or a router route; an alias to a name that
    is neither is a start-up error."""
    plugins: PluginsSection = PluginsSection()
    """Which plugins load, and each plugin's settings under `plugins.<name>` (validated by that
    plugin, its errors prefixed `plugins.<name>`)."""


