"""The OpenAI endpoints the mock serves: chat completions, legacy completions, embeddings,
responses and the model list (and a 404 in OpenAI's shape for everything else).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from . import structured
from .answers import _DONE, _MALFORMED_JSON, _answer_len, _pace, _pieces, _sse, _stream, _usage
from .faults import _begin, _error, _json, _prologue
from .settings import STATE_KEY, ModelBehaviour, _State
from .tokens import _input_tokens, _messages_tokens, count_tokens

_CREATED = 1_700_000_000


def _text_answer(body: dict[str, Any], state: _State, b: ModelBehaviour,
                 structured_text: str | None) -> tuple[list[str], bool]:
    """The answer's pieces (one token each) and whether a token limit cut it."""
    if structured_text is not None:
        return structured.pieces_of(structured_text, body)
    n, capped = _answer_len(body, state, b)
    return _pieces(n), capped


async def _chat(request: web.Request) -> web.StreamResponse:
    state, body, model, b = await _begin(request)
    if b.malformed and not body.get("stream"):
        return web.Response(body=_MALFORMED_JSON, content_type="application/json")
    prompt = _messages_tokens(body.get("messages"))
    rng = structured.rng_for(body)
    tool = structured.tool_call(body, rng)
    text = None if tool else structured.structured_text(body, rng)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if tool:
        name, arguments = tool
        frags = [arguments[i:i + 8] for i in range(0, len(arguments), 8)]
        n, finish = len(frags) + 1, "tool_calls"
        call_id = f"call_{uuid.uuid4().hex[:24]}"
    else:
        pieces, capped = _text_answer(body, state, b, text)
        n, finish = len(pieces), "length" if capped else "stop"
    usage = _usage(prompt, n, b)
    if not body.get("stream") or b.ignore_stream:
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
    if not body.get("stream") or b.ignore_stream:
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
    pieces, capped = _text_answer(body, state, b, structured.structured_text(body, structured.rng_for(body)))
    n = len(pieces)
    rid, mid = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
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
        "text": body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}},
        "truncation": "disabled",
        "max_output_tokens": body.get("max_output_tokens"), "usage": usage}
    if not body.get("stream") or b.ignore_stream:
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
