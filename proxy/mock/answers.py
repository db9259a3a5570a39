"""How the mock's answers are made: their length and pieces, usage, pacing, tool calls,
and the SSE stream with its faults (malformed data, a connection broken midway).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from .faults import _hang
from .settings import ModelBehaviour, _State

# One piece = one token under count_tokens: single CJK characters, single full-width
# punctuation marks (between CJK characters) and space-prefixed words.
_PIECES = (*"您好，这是模拟的客服回答。", " (floodgate", " mock)", *"您的问题已收到，正在为您处理，请稍候。")
_MALFORMED_JSON = b'{"id": "chatcmpl-x", "choices": [{"mess'
_DONE = b"data: [DONE]\n\n"


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
    faulty = (b.break_stream_after is not None or b.stall_stream_after is not None) and (
        b.stream_fault_rate >= 1.0 or state.rng.random() < b.stream_fault_rate)
    cut = b.break_stream_after if faulty else None
    stall = b.stall_stream_after if faulty else None
    await first_token_delay(state, b)
    tps = _tps(state, b)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i, frame in enumerate(body):
            if i == cut:
                break
            if i == stall:
                await _hang(request)  # silent until the client leaves
                return resp
            if tps > 0:  # pace against a schedule so sleeps don't accumulate drift
                await asyncio.sleep(max(0.0, start + (i + 1) / tps - loop.time()))
            await resp.write(frame)
    except ConnectionResetError:
        return resp  # the client left (a gateway cancelling a hedge race's loser)
    if cut is not None:
        if request.transport is not None:
            request.transport.close()  # flushes what was written, then drops the connection
        return resp  # aiohttp ignores the ConnectionError when it tries to finish
    for frame in tail:
        await resp.write(frame)
    await resp.write_eof()
    return resp


async def first_token_delay(state: _State, b: ModelBehaviour) -> None:
    """A slow first token, on the configured share of requests."""
    if b.first_token_delay_ms > 0 and (b.first_token_delay_rate >= 1.0
                                       or state.rng.random() < b.first_token_delay_rate):
        await asyncio.sleep(b.first_token_delay_ms / 1000.0)


async def _pace(state: _State, b: ModelBehaviour, tokens: int) -> None:
    """Non-streamed answers take as long as generating them would (and a slow first token)."""
    await first_token_delay(state, b)
    tps = _tps(state, b)
    if tps > 0 and tokens:
        await asyncio.sleep(tokens / tps)


def _pieces(n: int) -> list[str]:
    return [_PIECES[i % len(_PIECES)] for i in range(n)]
