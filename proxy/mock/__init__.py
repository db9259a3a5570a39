"""Built-in fake OpenAI-compatible upstream with per-model fault injection.

Serves ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``
and ``/v1/responses`` (each also without ``/v1``) with deterministic answers and exact token
accounting, plus control endpoints under ``/_mock/`` (``stats``, ``behaviour``, ``reset``).

Token counting (used for every ``prompt_tokens``/``input_tokens`` figure): a text counts one
token per CJK character plus one per maximal run of other non-whitespace characters. A chat
prompt costs ``sum(4 + tokens(message text))`` over its messages (text = string content or the
``text`` of content parts); legacy prompts and embedding inputs cost ``tokens(text)`` (token
arrays: their length); a Responses input costs ``tokens(instructions)`` plus the chat formula
over input items (a plain string input is one user message). Answers are made of exactly
``completion_tokens`` pieces from a fixed list, each piece counting as one token under the same
rule. Everything is self-contained (aiohttp, orjson, stdlib) and state lives on the app.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import random
import re
import signal
import struct
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, get_args, get_type_hints

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from proxy.config import MOCK_BASE_URL, Config, UpstreamSettings
from proxy.hookspecs import hookimpl

__all__ = [
    "MockPlugin", "MockSettings", "MockStats", "MockUpstream", "ModelBehaviour", "RecordedRequest",
    "add_arguments", "count_tokens", "create_mock_app", "parse_fault", "run", "serve_forever",
    "settings_from_args",
]

DEFAULT_MODELS = ["deepseek-v3.2", "gemini-2.5-flash", "gpt-4.1", "claude-sonnet-4.5",
                  "text-embedding-3-small"]
# One piece = one token under count_tokens: single CJK characters, single full-width
# punctuation marks (between CJK characters) and space-prefixed words.
_PIECES = (*"您好，这是模拟的客服回答。", " (floodgate", " mock)", *"您的问题已收到，正在为您处理，请稍候。")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_HANG_CAP_S = 3600.0
_CREATED = 1_700_000_000
_HTML_503 = ("<html><body><h1>503 Service Temporarily Unavailable</h1>"
             "<p>The upstream is overloaded (floodgate mock).</p></body></html>")
_MALFORMED_JSON = b'{"id": "chatcmpl-x", "choices": [{"mess'
_DONE = b"data: [DONE]\n\n"


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
    break_stream_after: int | None = None  # streams: abort the transport after N content chunks
    tokens_per_second: float | None = None  # overrides MockSettings.tokens_per_second
    completion_tokens: int | None = None  # overrides MockSettings.completion_tokens
    cached_tokens: int = 0  # reported as prompt_tokens_details.cached_tokens (<= prompt)
    # Runtime counter (fail_first failures already served); not a configuration field.
    _failed: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within 0..1")
        if not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be an HTTP error status (400..599)")
        for name in ("latency_ms", "jitter_ms", "fail_first", "cached_tokens", "retry_after",
                     "break_stream_after", "tokens_per_second", "completion_tokens"):
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

    def reset(self) -> None:
        self.stats.reset()
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


class _Reply(Exception):
    """Short-circuits a handler with a ready response (errors, faults)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def count_tokens(text: str) -> int:
    """Deterministic token count: CJK characters + runs of other non-space characters."""
    return len(_TOKEN_RE.findall(text))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return ""


def _messages_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(4 + count_tokens(_text_of(m.get("content"))) for m in messages
               if isinstance(m, dict))


def _input_tokens(value: Any) -> list[int]:
    """Per-input token counts for legacy prompts and embedding inputs."""
    if isinstance(value, str):
        return [count_tokens(value)]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [len(value)]
    if isinstance(value, list):
        return [count_tokens(v) if isinstance(v, str) else len(v) if isinstance(v, list) else 0
                for v in value]
    return [0]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def _error(status: int, message: str, type_: str = "invalid_request_error",
           param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> _Reply:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return _Reply(_json(body, status, headers))


def _fault_reply(model: str, b: ModelBehaviour) -> _Reply:
    headers = {} if b.retry_after is None else {"Retry-After": f"{b.retry_after:g}"}
    if b.error_status == 429:
        return _error(429, f"Rate limit reached for {model} (floodgate mock).", "requests",
                      code="rate_limit_exceeded", headers=headers)
    if b.error_status == 503:
        return _Reply(web.Response(status=503, text=_HTML_503, content_type="text/html",
                                   headers=headers))
    type_ = "server_error" if b.error_status >= 500 else "invalid_request_error"
    return _error(b.error_status, f"Injected upstream error {b.error_status} for {model} "
                  "(floodgate mock).", type_)


async def _hang(request: web.Request) -> None:
    # aiohttp does not cancel handlers on disconnect by default, so poll the transport.
    deadline = asyncio.get_running_loop().time() + _HANG_CAP_S
    while asyncio.get_running_loop().time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.05)


async def _prologue(request: web.Request, state: _State) -> dict[str, Any]:
    """Record the request, check auth and JSON; returns the body."""
    raw = await request.read() if request.can_read_body else b""
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
        raw = b"!"  # marks "had a body but it was not JSON"
    state.stats.record(request.path, request.headers.copy(), body)
    key = state.settings.api_key
    if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
        raise _error(401, "Incorrect API key provided (floodgate mock).",
                     code="invalid_api_key")
    if raw and not isinstance(body, dict):
        raise _error(400, "The request body is not a valid JSON object.")
    return body or {}


async def _begin(request: web.Request, *, stream_ok: bool = True
                 ) -> tuple[_State, dict[str, Any], str, ModelBehaviour]:
    """Prologue + model lookup + hang/latency/error faults for a POST endpoint."""
    state = request.app[STATE_KEY]
    body = await _prologue(request, state)
    settings = state.settings
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _error(400, "you must provide a model parameter", param="model")
    if model not in settings.models:
        raise _error(404, f"The model `{model}` does not exist or you do not have access to it.",
                     param="model", code="model_not_found")
    if stream_ok and settings.reject_stream_options and "stream_options" in body:
        raise _error(400, "Unrecognized request argument supplied: stream_options",
                     param="stream_options")
    b = settings.behaviours.get(model, _NO_FAULTS)
    if b.hang:
        await _hang(request)
        raise _Reply(web.Response(status=499))  # client is gone; nobody reads this
    delay = b.latency_ms + (state.rng.uniform(0.0, b.jitter_ms) if b.jitter_ms > 0 else 0.0)
    if delay > 0:
        await asyncio.sleep(delay / 1000.0)
    if b.fail_first > b._failed:
        b._failed += 1
        raise _fault_reply(model, b)
    if b.error_rate > 0 and state.rng.random() < b.error_rate:
        raise _fault_reply(model, b)
    return state, body, model, b


def _answer_len(body: dict[str, Any], state: _State, b: ModelBehaviour) -> tuple[int, bool]:
    """(token count, capped by a max_* limit)."""
    n = b.completion_tokens if b.completion_tokens is not None else \
        state.settings.completion_tokens
    limits = [v for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")
              if isinstance(v := body.get(k), int) and v >= 0]
    cap = min(limits, default=n)
    return (cap, True) if cap < n else (n, False)


def _tps(state: _State, b: ModelBehaviour) -> float:
    tps = b.tokens_per_second
    return state.settings.tokens_per_second if tps is None else tps


def _usage(prompt: int, completion: int, b: ModelBehaviour) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": min(b.cached_tokens, prompt)},
            "completion_tokens_details": {"reasoning_tokens": 0}}


def _sse(obj: Any, event: str | None = None) -> bytes:
    data = b"data: " + orjson.dumps(obj) + b"\n\n"
    return data if event is None else b"event: " + event.encode() + b"\n" + data


async def _stream(request: web.Request, state: _State, b: ModelBehaviour, head: list[bytes],
                  body: list[bytes], tail: list[bytes], bad: bytes) -> web.StreamResponse:
    """Send SSE frames: head, paced body (one per token), tail; applying stream faults."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for frame in head:
        await resp.write(frame)
    if b.malformed:  # an invalid data line, then a clean end without [DONE]
        await resp.write(bad)
        await resp.write_eof()
        return resp
    tps = _tps(state, b)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, frame in enumerate(body):
        if i == b.break_stream_after:
            break
        if tps > 0:  # pace against a schedule so sleeps don't accumulate drift
            await asyncio.sleep(max(0.0, start + (i + 1) / tps - loop.time()))
        await resp.write(frame)
    if b.break_stream_after is not None:
        if request.transport is not None:
            request.transport.close()  # flushes what was written, then drops the connection
        return resp  # aiohttp ignores the ConnectionError when it tries to finish
    for frame in tail:
        await resp.write(frame)
    await resp.write_eof()
    return resp


async def _pace(state: _State, b: ModelBehaviour, tokens: int) -> None:
    """Non-streamed answers take as long as generating them would."""
    tps = _tps(state, b)
    if tps > 0 and tokens:
        await asyncio.sleep(tokens / tps)


def _pieces(n: int) -> list[str]:
    return [_PIECES[i % len(_PIECES)] for i in range(n)]


def _tool_call(body: dict[str, Any]) -> tuple[str, list[str]] | None:
    """(function name, argument fragments) when the request should get a tool call."""
    tools, messages = body.get("tools"), body.get("messages")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
            and messages[-1].get("role") == "tool":
        return None
    fn = tools[0].get("function") if isinstance(tools[0].get("function"), dict) else tools[0]
    users = [m for m in messages or () if isinstance(m, dict) and m.get("role") == "user"]
    query = _text_of(users[-1].get("content"))[:40] if users else "floodgate"
    args = orjson.dumps({"query": query or "floodgate"}).decode()
    return str(fn.get("name") or "tool"), [args[i:i + 8] for i in range(0, len(args), 8)]


async def _chat(request: web.Request) -> web.StreamResponse:
    state, body, model, b = await _begin(request)
    if b.malformed and not body.get("stream"):
        return web.Response(body=_MALFORMED_JSON, content_type="application/json")
    prompt = _messages_tokens(body.get("messages"))
    tool = _tool_call(body)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if tool:
        name, frags = tool
        n, finish = len(frags) + 1, "tool_calls"
        call_id = f"call_{uuid.uuid4().hex[:24]}"
    else:
        n, capped = _answer_len(body, state, b)
        finish, pieces = ("length" if capped else "stop"), _pieces(n)
    usage = _usage(prompt, n, b)
    if not body.get("stream"):
        await _pace(state, b, n)
        if tool:
            msg: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": "".join(frags)}}]}
        else:
            msg = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        return _json({"id": cid, "object": "chat.completion", "created": created, "model": model,
                      "system_fingerprint": "fp_floodgate_mock",
                      "choices": [{"index": 0, "message": msg, "logprobs": None,
                                   "finish_reason": finish}], "usage": usage})
    opts = body.get("stream_options")
    with_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_floodgate_mock"}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish_reason}]}
        if with_usage:
            c["usage"] = None
        return _sse(c)

    if tool:
        head = [chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": call_id, "type": "function",
             "function": {"name": name, "arguments": ""}}]})]
        frames = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]})
                  for f in frags]
    else:
        head = [chunk({"role": "assistant", "content": ""})]
        frames = [chunk({"content": p}) for p in pieces]
    tail = [chunk({}, finish)]
    if with_usage:
        tail.append(_sse({**base, "choices": [], "usage": usage}))
    tail.append(_DONE)
    return await _stream(request, state, b, head, frames, tail, b"data: {not json\n\n")


async def _completions(request: web.Request) -> web.StreamResponse:
    state, body, model, b = await _begin(request)
    if b.malformed and not body.get("stream"):
        return web.Response(body=_MALFORMED_JSON, content_type="application/json")
    prompt = sum(_input_tokens(body.get("prompt", "")))
    n, capped = _answer_len(body, state, b)
    finish, pieces, usage = ("length" if capped else "stop"), _pieces(n), _usage(prompt, n, b)
    base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
            "created": int(time.time()), "model": model}
    if not body.get("stream"):
        await _pace(state, b, n)
        return _json({**base, "choices": [{"text": "".join(pieces), "index": 0,
                                           "logprobs": None, "finish_reason": finish}],
                      "usage": usage})
    opts = body.get("stream_options")
    with_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    extra = {"usage": None} if with_usage else {}

    def chunk(text: str, finish_reason: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"text": text, "index": 0, "logprobs": None,
                                          "finish_reason": finish_reason}], **extra})

    tail = [chunk("", finish)]
    if with_usage:
        tail.append(_sse({**base, "choices": [], "usage": usage}))
    tail.append(_DONE)
    return await _stream(request, state, b, [], [chunk(p) for p in pieces], tail,
                         b"data: {not json\n\n")


async def _embeddings(request: web.Request) -> web.StreamResponse:
    state, body, model, b = await _begin(request, stream_ok=False)
    if b.malformed:
        return web.Response(body=_MALFORMED_JSON, content_type="application/json")
    raw = body.get("input")
    inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    dims = body.get("dimensions")
    dims = dims if isinstance(dims, int) and dims > 0 else state.settings.embedding_dimensions
    as_b64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(inputs):
        seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
        ints = struct.unpack(f"<{dims}H", hashlib.shake_128(seed).digest(2 * dims))
        vec = [v / 32767.5 - 1.0 for v in ints]
        norm = sum(v * v for v in vec) ** 0.5 or 1.0
        packed = struct.pack(f"<{dims}f", *(v / norm for v in vec))  # float32 little-endian
        emb: Any = base64.b64encode(packed).decode() if as_b64 else \
            list(struct.unpack(f"<{dims}f", packed))  # same float32 values in both formats
        data.append({"object": "embedding", "index": i, "embedding": emb})
    prompt = sum(_input_tokens(raw))
    return _json({"object": "list", "data": data, "model": model,
                  "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})


async def _responses(request: web.Request) -> web.StreamResponse:
    state, body, model, b = await _begin(request)
    if b.malformed and not body.get("stream"):
        return web.Response(body=_MALFORMED_JSON, content_type="application/json")
    raw, instructions = body.get("input"), body.get("instructions")
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    prompt = _messages_tokens(items) + (count_tokens(instructions)
                                        if isinstance(instructions, str) else 0)
    n, capped = _answer_len(body, state, b)
    pieces, rid, mid = _pieces(n), f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
    text = "".join(pieces)
    cached = min(b.cached_tokens, prompt)
    usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
             "output_tokens": n, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": prompt + n}
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = {"type": "message", "id": mid, "status": "completed", "role": "assistant",
            "content": [part]}
    response = {
        "id": rid, "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if capped else "completed", "model": model, "output": [item],
        "error": None, "incomplete_details": {"reason": "max_output_tokens"} if capped else None,
        "instructions": instructions, "metadata": body.get("metadata") or {},
        "parallel_tool_calls": True, "temperature": body.get("temperature"),
        "top_p": body.get("top_p"), "tool_choice": "auto", "tools": [],
        "text": {"format": {"type": "text"}}, "truncation": "disabled",
        "max_output_tokens": body.get("max_output_tokens"), "usage": usage}
    if not body.get("stream"):
        await _pace(state, b, n)
        return _json(response)
    seq = iter(range(1 << 30))

    def event(type_: str, **payload: Any) -> bytes:
        return _sse({"type": type_, "sequence_number": next(seq), **payload}, type_)

    pending = {**response, "status": "in_progress", "output": [], "usage": None,
               "incomplete_details": None}
    where = {"item_id": mid, "output_index": 0, "content_index": 0}
    head = [event("response.created", response=pending),
            event("response.in_progress", response=pending),
            event("response.output_item.added", output_index=0,
                  item={**item, "status": "in_progress", "content": []}),
            event("response.content_part.added", **where, part={**part, "text": ""})]
    frames = [event("response.output_text.delta", **where, delta=p, logprobs=[])
              for p in pieces]
    tail = [event("response.output_text.done", **where, text=text, logprobs=[]),
            event("response.content_part.done", **where, part=part),
            event("response.output_item.done", output_index=0, item=item),
            event("response.incomplete" if capped else "response.completed",
                  response=response)]
    bad = b"event: response.output_text.delta\ndata: {not json\n\n"
    return await _stream(request, state, b, head, frames, tail, bad)


def _model_obj(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _CREATED, "owned_by": "floodgate-mock"}


async def _list_models(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    await _prologue(request, state)
    return _json({"object": "list", "data": [_model_obj(m) for m in state.settings.models]})


async def _get_model(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    await _prologue(request, state)
    model = request.match_info["model_id"]
    if model not in state.settings.models:
        raise _error(404, f"The model `{model}` does not exist.", param="model",
                     code="model_not_found")
    return _json(_model_obj(model))


async def _not_found(request: web.Request) -> web.Response:
    await _prologue(request, request.app[STATE_KEY])
    raise _error(404, f"Unknown endpoint: {request.method} {request.path}", code="not_found")


async def _ctl_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY].stats.to_dict())


async def _ctl_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return _json({"ok": True})


async def _ctl_behaviour(request: web.Request) -> web.Response:
    try:
        values = orjson.loads(await request.read())
        if not isinstance(values, dict) or not isinstance(model := values.pop("model", None), str):
            raise ValueError('expected a JSON object with a string "model"')
        behaviour = request.app[STATE_KEY].set_behaviour(model, values)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise _error(400, str(exc)) from None
    return _json({"model": model, **behaviour.to_dict()})


@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    tasks = request.app[STATE_KEY].tasks
    task = asyncio.current_task()
    if task is not None:
        tasks.add(task)
    try:
        return await handler(request)
    except _Reply as reply:
        return reply.response
    finally:
        tasks.discard(task)  # type: ignore[arg-type]


async def _cancel_in_flight(app: web.Application) -> None:
    # Hanging/slow handlers would otherwise hold shutdown for the runner's shutdown_timeout.
    current = asyncio.current_task()
    for task in list(app[STATE_KEY].tasks):
        if task is not current:
            task.cancel()


def create_mock_app(settings: MockSettings | None = None) -> web.Application:
    """Build the mock aiohttp app; its state is reachable as ``app[STATE_KEY]``."""
    app = web.Application(middlewares=[_middleware], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = _State(settings if settings is not None else MockSettings())
    app.on_shutdown.append(_cancel_in_flight)
    r = app.router
    r.add_get("/_mock/stats", _ctl_stats)
    r.add_post("/_mock/behaviour", _ctl_behaviour)
    r.add_post("/_mock/reset", _ctl_reset)
    for prefix in ("/v1", ""):
        r.add_get(f"{prefix}/models", _list_models)
        r.add_get(prefix + "/models/{model_id:.+}", _get_model)
        r.add_post(f"{prefix}/chat/completions", _chat)
        r.add_post(f"{prefix}/completions", _completions)
        r.add_post(f"{prefix}/embeddings", _embeddings)
        r.add_post(f"{prefix}/responses", _responses)
    r.add_route("*", "/{tail:.*}", _not_found)
    return app


class MockUpstream:
    """Runs the mock app on a real socket; ``async with MockUpstream() as mock: mock.url``."""

    def __init__(self, settings: MockSettings | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.settings = settings if settings is not None else MockSettings()
        self.host = host
        self.port = port
        self.app = create_mock_app(self.settings)
        self._state = self.app[STATE_KEY]
        self._runner: web.AppRunner | None = None

    @property
    def stats(self) -> MockStats:
        return self._state.stats

    @property
    def url(self) -> str:
        """Base URL including ``/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> MockUpstream:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MockUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def set_behaviour(self, model: str, **values: Any) -> None:
        """Replace ``model``'s behaviour (fields of ModelBehaviour); adds unknown models."""
        self._state.set_behaviour(model, values)

    def reset(self) -> None:
        """Clear stats and fail_first counters, and reseed the RNG."""
        self._state.reset()


# --------------------------------------------------------------------------- CLI

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


def parse_fault(spec: str) -> tuple[str, dict[str, Any]]:
    """Parse ``MODEL:key=value[,key=value...]`` (argparse ``type=`` for ``--fault``)."""
    model, sep, pairs = spec.rpartition(":")  # rpartition: model ids may contain ':'
    if not sep or not model or not pairs:
        raise argparse.ArgumentTypeError(f"expected MODEL:key=value[,key=value...], got {spec!r}")
    values: dict[str, Any] = {}
    try:
        for pair in pairs.split(","):
            key, eq, raw = pair.partition("=")
            key = key.strip()
            if not eq:
                raise ValueError(f"expected key=value, got {pair!r}")
            if key not in _BEHAVIOUR_FIELDS:
                raise ValueError(f"unknown fault key {key!r} (valid: "
                                 f"{', '.join(sorted(_BEHAVIOUR_FIELDS))})")
            values[key] = _coerce(key, raw.strip())
        ModelBehaviour(**values)  # range checks
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{spec!r}: {exc}") from None
    return model, values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``floodgate mock-upstream`` options to ``parser``."""
    d = MockSettings()
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9000, help="port, 0 = any (default: 9000)")
    parser.add_argument("--tps", type=float, default=d.tokens_per_second, metavar="N",
                        help="tokens per second for streaming pacing, 0 = unthrottled")
    parser.add_argument("--completion-tokens", type=int, default=d.completion_tokens,
                        metavar="N", help="answer length in tokens (default: %(default)s)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' (default: no auth)")
    parser.add_argument("--seed", type=int, default=None,
                        help="RNG seed for error_rate/jitter, for reproducible runs")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated model ids to serve (default: %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="base latency before headers, all models")
    parser.add_argument("--jitter-ms", type=float, default=0.0,
                        help="extra uniform random latency 0..N ms, all models")
    parser.add_argument(
        "--fault", action="append", type=parse_fault, default=[], metavar="MODEL:K=V[,K=V]",
        help="per-model behaviour, repeatable; keys: " + ", ".join(sorted(_BEHAVIOUR_FIELDS))
        + " (e.g. deepseek-v3.2:error_rate=0.3,error_status=503 or gpt-4.1:hang=true)")


def settings_from_args(args: argparse.Namespace) -> MockSettings:
    """Build MockSettings from parsed ``add_arguments`` options (--fault may add models)."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    settings = MockSettings(models=models, tokens_per_second=args.tps,
                            completion_tokens=args.completion_tokens, api_key=args.api_key,
                            seed=args.seed)
    timing = {"latency_ms": args.latency_ms, "jitter_ms": args.jitter_ms}
    if args.latency_ms or args.jitter_ms:
        settings.behaviours = {m: ModelBehaviour(**timing) for m in models}
    for model, values in args.fault:
        merged = {**timing, **values}
        if model in settings.behaviours:
            merged = {**settings.behaviours[model].to_dict(), **values}
        settings.behaviours[model] = ModelBehaviour(**merged)
        if model not in settings.models:
            settings.models.append(model)
    return settings


async def serve_forever(args: argparse.Namespace) -> None:
    """Run the mock until cancelled or SIGINT/SIGTERM; prints the URL it listens on."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows / not the main thread
            pass
    try:
        async with MockUpstream(settings_from_args(args), host=args.host, port=args.port) as m:
            print(f"floodgate mock upstream listening on {m.url} "
                  f"(models: {', '.join(m.settings.models)})", flush=True)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """``floodgate mock-upstream``: serve until Ctrl-C or SIGTERM."""
    try:
        asyncio.run(serve_forever(args))
    except KeyboardInterrupt:
        pass
    return 0


# --------------------------------------------------------------------------- the gateway plugin

class _BehaviourBlock(BaseModel):
    """``upstreams.<name>.mock.behaviours.<model>``: the fields of :class:`ModelBehaviour`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    latency_ms: float = Field(0.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    fail_first: int = Field(0, ge=0)
    error_status: int = Field(500, ge=400, le=599)
    retry_after: float | None = Field(1.0, ge=0)
    hang: bool = False
    malformed: bool = False
    break_stream_after: int | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, ge=0)
    completion_tokens: int | None = Field(None, gt=0)
    cached_tokens: int = Field(0, ge=0)


class _MockBlock(BaseModel):
    """``upstreams.<name>.mock``: options of a ``base_url: builtin:mock`` upstream."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tokens_per_second: float = Field(0.0, ge=0)
    completion_tokens: int = Field(16, gt=0)
    seed: int | None = None
    behaviours: dict[str, _BehaviourBlock] = {}


class MockPlugin:
    """Serves ``base_url: builtin:mock``: a :class:`MockUpstream` started in-process; adds
    ``floodgate mock-upstream``.

    Registered through the ``floodgate`` entry-point group, so the gateway's core
    never imports the mock: it only asks, at start-up, who serves ``builtin:mock``
    (and, in the CLI, who adds commands).
    """

    name = "mock"

    def __init__(self) -> None:
        self.blocks: dict[str, _MockBlock] = {}
        self.models: list[str] = []
        self.mocks: list[MockUpstream] = []

    @hookimpl
    def proxy_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser(
            "mock-upstream", help="run the built-in fake OpenAI-compatible upstream",
            description="A fake OpenAI-compatible API for tests, demos and benchmarks, with streaming at a "
                        "chosen speed and fault injection per model.")
        add_arguments(parser)
        parser.set_defaults(func=run)

    @hookimpl
    def proxy_configure(self, config: Config) -> None:
        self.blocks = {name: config.section(("upstreams", name, "mock"), _MockBlock)
                       for name, upstream in config.upstreams.items() if upstream.base_url == MOCK_BASE_URL}
        self.models = sorted({m.upstream_model or name for name, m in config.models.items()})

    @hookimpl
    async def proxy_builtin_upstream(self, name: str, settings: UpstreamSettings) -> str | None:
        if settings.base_url != MOCK_BASE_URL:
            return None
        block = self.blocks.get(name, _MockBlock())
        mock = MockUpstream(MockSettings(
            models=self.models or list(DEFAULT_MODELS), tokens_per_second=block.tokens_per_second,
            completion_tokens=block.completion_tokens, seed=block.seed,
            behaviours={m: ModelBehaviour(**b.model_dump()) for m, b in block.behaviours.items()},
            api_key=settings.api_key.get_secret_value() if settings.api_key is not None else None))
        await mock.start()
        self.mocks.append(mock)
        print(f"floodgate: built-in mock upstream at {mock.url}", flush=True)
        return mock.url

    @hookimpl
    async def proxy_shutdown(self) -> None:
        mocks, self.mocks = self.mocks, []
        for mock in mocks:
            await mock.stop()
