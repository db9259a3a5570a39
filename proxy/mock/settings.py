"""The mock's settings and per-app state: what to serve, how each model misbehaves, what was received.

Everything mutable lives on a :class:`_State` stored on the app under :data:`STATE_KEY`
(one per :func:`~proxy.mock.create_mock_app` call), never at module level.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, get_args, get_type_hints

from aiohttp import web

from .quota import KeyQuota, Quota

DEFAULT_MODELS = ["deepseek-v3.2", "gemini-2.5-flash", "gpt-4.1", "claude-sonnet-4.5",
                  "text-embedding-3-small"]


@dataclass
class ModelBehaviour:
    """Faults and timing for one model; applied per request in declaration order."""

    latency_ms: float = 0.0  # base delay before the response headers
    jitter_ms: float = 0.0  # plus uniform random 0..jitter_ms
    error_rate: float = 0.0  # probability 0..1 that a request fails with error_status
    fail_first: int = 0  # the next N requests fail with error_status (counts down)
    error_status: int = 500  # 429: rate-limit JSON + Retry-After; 503: HTML page; else JSON
    retry_after: float | None = 1.0  # seconds, sent as Retry-After on 429 and 503
    hang: bool = False  # never answer (until the client leaves, the server stops, or 1 h)
    malformed: bool = False  # 200 with invalid JSON body / invalid SSE data line
    break_stream_after: int | None = None  # streams: abort the transport after N content chunks (0: role chunk only)
    stall_stream_after: int | None = None  # streams: go silent after N content chunks (0: role chunk only)
    stream_fault_rate: float = 1.0  # share (0..1) of streams that break_/stall_stream_after apply to
    first_token_delay_ms: float = 0.0  # wait after the role chunk (non-streamed: before the answer) ...
    first_token_delay_rate: float = 1.0  # ... on this share (0..1) of requests
    ignore_stream: bool = False  # answer stream requests with a plain JSON body (a server ignoring stream)
    tokens_per_second: float | None = None  # overrides MockSettings.tokens_per_second
    completion_tokens: int | None = None  # overrides MockSettings.completion_tokens
    cached_tokens: int = 0  # reported as prompt_tokens_details.cached_tokens (<= prompt)
    # Runtime counter (fail_first failures already served); not a configuration field.
    _failed: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("error_rate", "stream_fault_rate", "first_token_delay_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be an HTTP error status (400..599)")
        for name in ("latency_ms", "jitter_ms", "fail_first", "cached_tokens", "retry_after",
                     "break_stream_after", "stall_stream_after", "first_token_delay_ms", "tokens_per_second",
                     "completion_tokens"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """The configuration fields as a JSON-able dict."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


_BEHAVIOUR_HINTS = get_type_hints(ModelBehaviour)
_BEHAVIOUR_FIELDS = {f.name for f in fields(ModelBehaviour) if f.init}
_NO_FAULTS = ModelBehaviour()


@dataclass
class MockSettings:
    """Server-wide settings. Mutating them on a running mock takes effect on the next request."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    tokens_per_second: float = 0.0  # 0 = as fast as possible; streams are paced at this rate
    completion_tokens: int = 16  # answer length, capped by max_tokens & co.
    api_key: str | None = None  # when set, require "Authorization: Bearer <api_key>"
    reject_stream_options: bool = False  # emulate a backend that 400s on `stream_options`
    behaviours: dict[str, ModelBehaviour] = field(default_factory=dict)
    seed: int | None = None  # seeds the RNG used for error_rate and jitter
    embedding_dimensions: int = 8
    # Provider quotas by API key ("*": every key without one of its own); their keys are accepted
    # besides api_key (two "provider keys" on one mock). See :mod:`.quota`.
    quotas: dict[str, Quota] = field(default_factory=dict)


class RecordedRequest(NamedTuple):
    """One received API request: path, headers (case-insensitive) and parsed JSON body."""

    path: str
    headers: Mapping[str, str]  # a case-insensitive copy (multidict.CIMultiDict)
    body: Any


@dataclass
class MockStats:
    """Live counters of API traffic (control endpoints are not counted)."""

    total: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    requests: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=100))

    @property
    def last(self) -> RecordedRequest | None:
        """The most recent request, if any."""
        return self.requests[-1] if self.requests else None

    def record(self, path: str, headers: Mapping[str, str], body: Any) -> None:
        self.total += 1
        self.by_path[path] += 1
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            self.by_model[body["model"]] += 1
        self.requests.append(RecordedRequest(path, headers, body))

    def reset(self) -> None:
        self.total = 0
        self.by_path.clear()
        self.by_model.clear()
        self.requests.clear()

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_path": dict(self.by_path),
                "by_model": dict(self.by_model),
                "requests": [{"path": r.path, "body": r.body,
                              "headers": {str(k): v for k, v in r.headers.items()}}
                             for r in self.requests]}


class _State:
    """Everything a mock app instance owns (no module-level mutable state)."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.stats = MockStats()
        self.rng = random.Random(settings.seed)
        self.tasks: set[asyncio.Task[Any]] = set()  # in-flight API handlers, cancelled on stop
        self.key_quotas: dict[str, KeyQuota] = {}  # live quota state by key (made on first use)

    def quota_for(self, key: str | None) -> KeyQuota | None:
        """The live quota of the key a request presented (its own, else ``"*"``'s)."""
        quotas = self.settings.quotas
        if not quotas:
            return None
        name = key if key in quotas else "*"
        quota = quotas.get(name)
        if quota is None:
            return None
        live = self.key_quotas.get(name)
        if live is None or live.quota is not quota:
            live = self.key_quotas[name] = KeyQuota(quota)
        return live

    def reset(self) -> None:
        self.stats.reset()
        self.key_quotas.clear()
        self.rng.seed(self.settings.seed)
        for behaviour in self.settings.behaviours.values():
            behaviour._failed = 0

    def set_behaviour(self, model: str, values: dict[str, Any]) -> ModelBehaviour:
        unknown = set(values) - _BEHAVIOUR_FIELDS
        if unknown:
            raise ValueError(f"unknown behaviour field(s): {', '.join(sorted(unknown))}")
        behaviour = ModelBehaviour(**{k: _coerce(k, v) for k, v in values.items()})
        self.settings.behaviours[model] = behaviour
        if model not in self.settings.models:
            self.settings.models.append(model)
        return behaviour


STATE_KEY = web.AppKey("floodgate_mock_state", _State)

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _coerce(name: str, value: Any) -> Any:
    """Convert a CLI string / JSON value to the type of ModelBehaviour field ``name``."""
    types = get_args(_BEHAVIOUR_HINTS[name]) or (_BEHAVIOUR_HINTS[name],)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in types:
            return None
        raise ValueError(f"{name} cannot be null")
    base = next(t for t in types if t is not type(None))
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"{name} expects a boolean, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{name} expects a {base.__name__}, got {value!r}")
    try:
        converted = base(value) if base is float else int(str(value), 10)
    except ValueError:
        raise ValueError(f"{name} expects a {base.__name__}, got {value!r}") from None
    return converted
