"""One load-test request: send it, read the answer (JSON or SSE), and tell what happened as a :class:`Sample`."""

from __future__ import annotations

import asyncio
import errno
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from proxy.types import Usage

_TAG_RE = re.compile(r"<[^>]*>")


@dataclass(slots=True)
class Sample:
    """One finished request. Times are seconds since the start of the run."""

    scheduled: float  # when it was due (closed loop: when it was sent)
    sent: float  # when the generator actually issued it
    end: float  # response fully read, or failure
    outcome: str  # HTTP status ("200", "503") or a client-side category ("timeout", ...)
    ok: bool
    first_token: float | None = None  # streams: first non-empty content delta
    last_token: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0  # part of prompt_tokens
    header_cost: float | None = None  # x-floodgate-cost-usd
    route: str | None = None  # x-floodgate-short-circuit, else x-floodgate-route
    model: str | None = None  # x-floodgate-model
    error: str | None = None


def _outcome_of(exc: BaseException) -> str:
    """A named category for a client-side failure."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = exc.os_error.errno == errno.ECONNREFUSED if exc.os_error else False
        return "connection_refused" if refused else "connection_error"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server_disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated_response"
    if isinstance(exc, (aiohttp.ClientOSError, ConnectionError)):
        return "connection_error"
    return "client_error"


def _error_text(raw: bytes) -> str:
    """The error message of an OpenAI error body, else the start of the body as text."""
    try:
        body = orjson.loads(raw)
        message = body["error"]["message"]
        if isinstance(message, str):
            return message[:200]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    text = raw[:2000].decode("utf-8", "replace")
    return " ".join(_TAG_RE.sub(" ", text).split())[:200]  # HTML error pages: just the words


def _float_or_none(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _usage(sample: Sample, usage: Any) -> None:
    counted = Usage.from_openai(usage) if usage else None
    if counted is not None:
        sample.prompt_tokens, sample.completion_tokens = counted.prompt_tokens, \
            counted.completion_tokens
        sample.cached_tokens = counted.cached_tokens


async def send(session: aiohttp.ClientSession, url: str, body: bytes, scheduled: float, *,
               clock: Callable[[], float], stream: bool) -> Sample:
    """POST ``body`` to ``url``; every failure becomes a named outcome in the sample, never an exception.
    ``clock()`` gives the time since the start of the run."""
    sample = Sample(scheduled, clock(), 0.0, "client_error", False)
    try:
        async with session.post(url, data=body) as resp:
            headers = resp.headers
            sample.route = headers.get("x-floodgate-short-circuit") or \
                headers.get("x-floodgate-route")
            sample.model = headers.get("x-floodgate-model")
            sample.header_cost = _float_or_none(headers.get("x-floodgate-cost-usd"))
            sample.outcome = str(resp.status)
            if resp.status != 200:
                sample.error = _error_text(await resp.read())
            elif stream:
                await _read_stream(resp, sample, clock)
            else:
                _read_json(await resp.read(), sample)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every client-side failure is a named outcome, never a crash
        sample.outcome, sample.ok = _outcome_of(exc), False
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
    sample.end = clock()
    return sample


def _read_json(raw: bytes, sample: Sample) -> None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        sample.outcome, sample.error = "invalid_response", _error_text(raw)
        return
    _usage(sample, data.get("usage"))
    sample.ok = True


async def _read_stream(resp: aiohttp.ClientResponse, sample: Sample, clock: Callable[[], float]) -> None:
    """Parse SSE ``data:`` lines as the bytes arrive (no line-length limit)."""
    buffer = b""
    async for chunk in resp.content.iter_any():
        now = clock()
        lines = (buffer + chunk).split(b"\n")
        buffer = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                sample.ok = True
                return
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                event = None
            if not isinstance(event, dict):
                sample.outcome, sample.error = "invalid_response", payload[:200].decode(
                    "utf-8", "replace")
                return
            if event.get("error"):
                sample.outcome = "stream_error"
                sample.error = _error_text(orjson.dumps(event))
                return
            for choice in event.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and (delta.get("content") or delta.get(
                        "reasoning_content") or delta.get("tool_calls")):
                    if sample.first_token is None:
                        sample.first_token = now
                    sample.last_token = now
            _usage(sample, event.get("usage"))
    sample.outcome, sample.error = "incomplete_stream", "the stream ended without [DONE]"
