"""What every API request goes through before its answer: recording, the API key and
JSON checks, the model lookup, then the injected faults (hang, latency, errors).

A handler stops early by raising :class:`_Reply` with a ready response; the server's
middleware sends it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from .quota import KeyQuota
from .settings import _NO_FAULTS, STATE_KEY, ModelBehaviour, _State
from .tokens import _input_tokens, _messages_tokens

#: The quota a request holds a place in (released when its handler ends), and its headers.
QUOTA = web.RequestKey("floodgate_mock_quota", KeyQuota)
QUOTA_HEADERS = web.RequestKey("floodgate_mock_quota_headers", dict)

_HANG_CAP_S = 3600.0
_HTML_503 = ("<html><body><h1>503 Service Temporarily Unavailable</h1>"
             "<p>The upstream is overloaded (floodgate mock).</p></body></html>")


class _Reply(Exception):
    """Short-circuits a handler with a ready response (errors, faults)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


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
    presented = request.headers.get("Authorization", "")
    if key is not None and presented != f"Bearer {key}" and presented[7:] not in state.settings.quotas:
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
    extra = _take_quota(request, state, body, model, b)
    if b.hang:
        await _hang(request)
        raise _Reply(web.Response(status=499))  # client is gone; nobody reads this
    delay = b.latency_ms + extra + (state.rng.uniform(0.0, b.jitter_ms) if b.jitter_ms > 0 else 0.0)
    if delay > 0:
        await asyncio.sleep(delay / 1000.0)
    if b.fail_first > b._failed:
        b._failed += 1
        raise _fault_reply(model, b)
    if b.error_rate > 0 and state.rng.random() < b.error_rate:
        raise _fault_reply(model, b)
    return state, body, model, b


def _take_quota(request: web.Request, state: _State, body: dict[str, Any], model: str,
                b: ModelBehaviour) -> float:
    """Admit the request under its key's quota (429 past it); the extra latency (ms) its load adds."""
    presented = request.headers.get("Authorization", "")
    quota = state.quota_for(presented[7:] if presented.startswith("Bearer ") else None)
    if quota is None:
        return 0.0
    prompt = _messages_tokens(body["messages"]) if isinstance(body.get("messages"), list) else \
        sum(_input_tokens(body.get("input", body.get("prompt", ""))))
    answer = b.completion_tokens if b.completion_tokens is not None else state.settings.completion_tokens
    limits = [v for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")
              if isinstance(v := body.get(k), int) and v >= 0]
    wait, headers = quota.admit(prompt + min([answer, *limits]))
    if wait is not None:
        raise _error(429, f"Rate limit reached for {model} (floodgate mock): please try again in "
                     f"{wait:.2f}s.", "requests", code="rate_limit_exceeded", headers=headers)
    request[QUOTA] = quota
    request[QUOTA_HEADERS] = headers
    return quota.extra_latency() * 1000.0
