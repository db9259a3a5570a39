"""The values that flow through the hooks.

Everything here is part of the public API: plugins receive and return these.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from .policy import UNRESTRICTED, KeyPolicy
from .text import last_user_text

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from .config import Config

__all__ = [
    "EndpointKind", "Principal", "ANONYMOUS", "Reply", "Target", "Route", "Attempt", "STOP", "Stop",
    "AttemptRecord", "Usage", "Timings", "RequestContext", "UpstreamResponse", "StreamChunk",
]


class EndpointKind(enum.Enum):
    """What a request is for: it decides the stages it runs through."""

    MODEL = "model"  # POST to a model endpoint: every stage
    MODELS = "models"  # GET /v1/models[/{id}]
    PASSTHROUGH = "passthrough"  # any other /v1 path, relayed to the default upstream
    ADMIN = "admin"  # /-/ endpoints of the core and of plugins


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``name`` is safe to log and to use as a metric label.

    :param policy: what this caller may do (models, passthrough endpoints, priority,
        limits, budget, tier forcing): one typed value every stage reads.
    :param admin: may use the admin endpoints (``/-/...``).
    :param attributes: free-form data for your own plugins (e.g. a tenant id from a
        JWT); the built-ins read only ``policy``.
    """

    name: str
    policy: KeyPolicy = UNRESTRICTED
    admin: bool = False
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.policy, KeyPolicy):  # caught where the principal is built
            raise TypeError(f"Principal.policy must be a proxy.KeyPolicy, not {type(self.policy).__name__}")


#: The caller when no plugin authenticates.
ANONYMOUS: Final = Principal(name="anonymous")


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer produced without any upstream call (a short-circuit).

    The core renders it as a ``chat.completion`` (or ``text_completion``), or as
    an SSE stream when the client asked for ``stream: true``.

    :param source: who answered, e.g. ``"faq/opening-hours"``; sent to the client as
        ``x-floodgate-short-circuit``.
    :param model: the ``model`` field of the rendered reply; defaults to the
        requested model.
    :param usage: token counts to report; estimated from the texts when ``None``.
    """

    content: str
    source: str
    model: str | None = None
    usage: Usage | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream model to try.

    :param model: the catalogue name (used for pricing, metrics, headers).
    :param upstream: the name of the upstream in the config.
    :param upstream_model: the model id sent to the upstream.
    :param overrides: request fields to set on the forwarded body (``max_tokens``
        caps, a prepended system prompt is expressed by the router as ``messages``).
    :param deployment: which of the model's catalogue ``deployments`` (``None``: its one ``upstream``).
    """

    model: str
    upstream: str
    upstream_model: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    deployment: str | None = None

    def with_overrides(self, **overrides: Any) -> Target:
        return Target(self.model, self.upstream, self.upstream_model, {**self.overrides, **overrides},
                      self.deployment)

    @property
    def qualified(self) -> str:
        """``model@deployment`` (or the model): what state and metrics of one place are keyed by."""
        return self.model if self.deployment is None else f"{self.model}@{self.deployment}"


@dataclass(frozen=True, slots=True)
class Route:
    """An ordered list of targets: the first is preferred, the rest are fallbacks."""

    name: str
    targets: tuple[Target, ...]


@dataclass(frozen=True, slots=True)
class Attempt:
    """What to try next: ``target`` after waiting ``delay`` seconds.

    :param timeout: caps this try's timeouts (seconds), e.g. to keep it inside a
        request's overall deadline; ``None`` uses the config's.
    :param hedge_after: seconds after sending: if no meaningful answer has come by
        then (see :attr:`AttemptRecord.first_event`), the core asks ``proxy_hedge``
        for an attempt to race alongside this one; the first to answer wins, the
        other is cancelled. ``None``: no hedging.
    """

    target: Target
    delay: float = 0.0
    timeout: float | None = None
    hedge_after: float | None = None


class Stop:
    """The type of :data:`STOP`."""

    _instance: Stop | None = None

    def __new__(cls) -> Stop:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "STOP"


#: Returned by ``proxy_next_attempt`` to end the attempts.
STOP: Final = Stop()


@dataclass(slots=True)
class AttemptRecord:
    """The outcome of one upstream try, appended to ``ctx.attempts`` when it starts.

    :param status: the upstream's HTTP status, or ``None`` when no response came.
    :param error: ``None`` on success; else one of ``"http"`` (a non-2xx status),
        ``"timeout"`` (``first_byte`` or ``total``), ``"stall"`` (no stream event
        within ``stall``), ``"connect"`` (connection refused/reset),
        ``"invalid_body"`` (not JSON, truncated, broken stream, an error event),
        ``"protocol"`` (an answer of the wrong kind, e.g. no SSE stream for a stream
        request: deterministic), ``"cancelled"`` (a hedge race's loser, or the
        client left), ``"circuit_open"``.
    :param retry_after: the upstream's ``Retry-After`` in seconds, if it sent one.
    :param first_event: ``time.perf_counter()`` when its first meaningful answer came:
        a stream's first event carrying content, a tool call, a refusal or a finish;
        a non-streaming answer read whole. ``None`` if it never came.
    :param committed: its answer is the one the client got (the 200 went out with it).
    :param usage: this attempt's token usage: reported by the upstream, or estimated
        (``usage_estimated``) for a stream cut short or a hedge race's loser, which the
        upstream saw and bills. The answering attempt's equals ``ctx.usage``.
    :param hedged: it ran concurrently with another attempt of the same request
        (a hedged pair: both are marked); ``hedge``: it was the extra one.
    :param discarded: events held before commitment and thrown away when it failed.
    :param upstream_headers: the upstream's response headers, ``x-ratelimit-*`` included (never relayed).
    """

    target: Target
    started: float
    ended: float = 0.0
    status: int | None = None
    error: str | None = None
    detail: str = ""
    retry_after: float | None = None
    first_event: float | None = None
    committed: bool = False
    usage: Usage | None = None
    usage_estimated: bool = False
    hedged: bool = False
    hedge: bool = False
    discarded: int = 0
    upstream_headers: Mapping[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)

    @property
    def time_to_first_event(self) -> float | None:
        """Seconds from sending to the first meaningful answer, if it came."""
        return None if self.first_event is None else self.first_event - self.started


@dataclass(slots=True)
class Usage:
    """Token counts in OpenAI's terms; ``cached_tokens`` is part of ``prompt_tokens``."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage | None:
        """Read a ``usage`` object of chat/completions, embeddings or responses."""
        if not isinstance(usage, Mapping):
            return None
        prompt = usage.get("prompt_tokens", usage.get("input_tokens")) or 0
        completion = usage.get("completion_tokens", usage.get("output_tokens")) or 0
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = details.get("cached_tokens") or 0 if isinstance(details, Mapping) else 0
        try:
            return cls(int(prompt), int(completion), int(cached))
        except (TypeError, ValueError):
            return None


@dataclass(slots=True)
class Timings:
    """Monotonic timestamps (``time.perf_counter``) of one request."""

    received: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    done: float | None = None
    upstream: float = 0.0  # seconds spent waiting on upstreams, all attempts

    @property
    def total(self) -> float:
        return ((self.done or time.perf_counter()) - self.received)

    @property
    def overhead(self) -> float:
        """Time the proxy itself added: total minus upstream time."""
        return max(0.0, self.total - self.upstream)


@dataclass(slots=True, eq=False)
class RequestContext:
    """Everything about one request, passed to every per-request hook.

    :param endpoint: the OpenAI endpoint without ``/v1``, e.g. ``"chat/completions"``;
        ``"models"``; for passthrough (``kind``) the path relayed (``"files/file-abc"``);
        for admin endpoints the path (``"-/usage"``).
    :param body: the parsed JSON body (``{}`` for bodiless requests). Plugins that
        need a different upstream body change the target's ``overrides``, not this.
    :param raw: the body bytes exactly as received.
    :param model: the model the client asked for (``None`` if it named none).
    :param state: scratch space for plugins to share data within one request.
    :param kind: what the request is for (model call, model list, passthrough, admin).
    :param preview: ``True`` on the copy :meth:`proxy.hooks.Hooks.preview_route` routes
        speculatively: record nothing (no metrics, no state for later stages).
    :param degraded: the overload steps that served it, in order (sent in ``x-floodgate-degraded``).
    :param relax: a step's name, set before ``proxy_short_circuit``: short-circuit plugins may
        answer looser matches, and append it to :attr:`degraded` when they do.
    """

    request_id: str
    method: str
    endpoint: str
    headers: CIMultiDictProxy[str]
    config: Config
    body: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""
    model: str | None = None
    stream: bool = False
    principal: Principal = ANONYMOUS
    reply: Reply | None = None
    route: Route | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    usage: Usage | None = None
    usage_estimated: bool = False
    cost: float | None = None
    status: int = 0
    error: str | None = None  # the error code sent to the client, if any
    client_disconnected: bool = False
    timings: Timings = field(default_factory=Timings)
    response_headers: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    kind: EndpointKind = EndpointKind.MODEL
    preview: bool = False
    degraded: list[str] = field(default_factory=list)
    relax: str | None = None
    request_bytes: int = 0  # body bytes received from the client
    response_bytes: int = 0  # body bytes sent to the client (passthrough: as relayed)
    _user_text: str | None = field(default=None, repr=False)
    _prompt_tokens: int | None = field(default=None, repr=False)

    @property
    def target(self) -> Target | None:
        """The model actually used: the target of the attempt whose answer the client got,
        else (nothing was answered) of the last attempt."""
        attempts = self.attempts
        for record in reversed(attempts):
            if record.committed:
                return record.target
        return attempts[-1].target if attempts else None

    @property
    def include_usage(self) -> bool:
        """Whether the client asked for the usage chunk of a stream."""
        opts = self.body.get("stream_options")
        return bool(isinstance(opts, dict) and opts.get("include_usage"))

    def estimated_prompt_tokens(self) -> int:
        """The offline estimate of the prompt's tokens (:func:`proxy.estimate_prompt_tokens`),
        computed once per request whoever asks first (routing, limits, budgets, usage)."""
        tokens = self._prompt_tokens
        if tokens is None:
            from .tokens import estimate_prompt_tokens

            tokens = self._prompt_tokens = estimate_prompt_tokens(self.body)
        return tokens

    def last_user_text(self) -> str:
        """The text of the last user message (chat, Responses) or the prompt: computed once
        per request (:func:`proxy.text.last_user_text`), so every plugin gets the same answer."""
        text = self._user_text
        if text is None:
            text = self._user_text = last_user_text(self.body)
        return text


class UpstreamResponse:
    """A successful non-streaming upstream response, offered to ``proxy_response``.

    The body stays as bytes unless a plugin reads :attr:`data` and calls
    :meth:`replace`; only then is it serialised again.
    """

    __slots__ = ("status", "headers", "_raw", "_data", "modified")

    def __init__(self, status: int, headers: dict[str, str], raw: bytes, data: Any) -> None:
        self.status = status
        self.headers = headers
        self._raw = raw
        self._data = data
        self.modified = False

    @property
    def data(self) -> Any:
        """The parsed JSON body (treat as read-only; use :meth:`replace` to change it)."""
        return self._data

    @property
    def raw(self) -> bytes:
        if self.modified:
            self._raw = orjson.dumps(self._data)
            self.modified = False
        return self._raw

    def replace(self, data: Any) -> None:
        """Send ``data`` to the client instead of the upstream's body."""
        self._data = data
        self.modified = True


class StreamChunk:
    """One SSE event of a relayed stream, offered to ``proxy_stream_chunk``.

    ``raw`` is the event's ``data:`` payload; :attr:`data` parses it on first use.
    Set ``drop = True`` to keep it from the client.
    """

    __slots__ = ("raw", "_data", "drop")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._data: Any = None
        self.drop = False

    @property
    def data(self) -> Any:
        if self._data is None and self.raw != b"[DONE]":
            try:
                self._data = orjson.loads(self.raw)
            except orjson.JSONDecodeError:
                self._data = None
        return self._data
