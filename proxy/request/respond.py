"""Stage 7, respond (JSON): a non-streaming upstream success, or a short-circuit reply.

Upstream bodies pass through as bytes unless a ``proxy_response`` plugin replaces
them; they are parsed once, for the usage (estimated and marked when absent).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web

from ..tokens import estimate_prompt_tokens, estimate_text_tokens
from ..types import AttemptRecord, Reply, RequestContext, Target, UpstreamResponse, Usage
from ..upstream import UpstreamError, excerpt, relayable_dict
from .render import SSE_HEADERS, reply_json, reply_stream

if TYPE_CHECKING:
    from ..hooks import Hooks


def set_route_headers(ctx: RequestContext, target: Target) -> None:
    """``x-floodgate-model``, ``-deployment``, ``-route`` and ``-attempts`` of the attempt that
    answered, and ``-degraded`` when an overload step changed how it was served."""
    headers = ctx.response_headers
    headers["x-floodgate-model"] = target.model
    if target.deployment is not None:
        headers["x-floodgate-deployment"] = target.deployment
    if ctx.route is not None:
        headers["x-floodgate-route"] = ctx.route.name
    headers["x-floodgate-attempts"] = str(len(ctx.attempts))
    set_degraded_header(ctx)


def set_degraded_header(ctx: RequestContext) -> None:
    """``x-floodgate-degraded: <step>[, <step>...]`` when overload steps served the request."""
    if ctx.degraded:
        ctx.response_headers["x-floodgate-degraded"] = ", ".join(ctx.degraded)


async def read_answer(upstream: aiohttp.ClientResponse) -> tuple[bytes, Any]:
    """Read and parse a non-streaming upstream answer whole (its meaningful event); the
    caller's attempt :class:`~proxy.upstream.Watchdog` bounds the time it takes.

    Raises :class:`UpstreamError`; always releases the response.
    """
    try:
        raw = await upstream.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise UpstreamError("invalid_body", f"upstream body was cut short ({type(exc).__name__})",
                            status=upstream.status) from None
    finally:
        upstream.release()
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError("invalid_body", f"upstream returned HTTP {upstream.status} with a body that is "
                            f"not JSON: {excerpt(raw)}", status=upstream.status) from None


async def complete(ctx: RequestContext, record: AttemptRecord, upstream: aiohttp.ClientResponse,
                   raw: bytes, data: Any, hooks: Hooks | None) -> web.Response:
    """Build the client's response from an answer :func:`read_answer` read.

    :param hooks: given when some plugin implements ``proxy_response``.
    """
    usage = Usage.from_openai(data.get("usage")) if isinstance(data, dict) else None
    if usage is None and isinstance(data, dict):
        usage = Usage(ctx.estimated_prompt_tokens(), completion_estimate(data))
        ctx.usage_estimated = True
    ctx.usage = usage
    record.usage, record.usage_estimated, record.committed = usage, ctx.usage_estimated, True
    ctx.timings.upstream += record.duration
    set_route_headers(ctx, record.target)
    result = UpstreamResponse(upstream.status, {}, raw, data)
    if hooks is not None:
        await hooks.response(ctx, result)
    ctx.status = upstream.status
    headers = relayable_dict(upstream.headers)  # one plain mapping, lower-case names: one copy into aiohttp's
    for key, value in ctx.response_headers.items():
        headers[key.lower()] = value
    headers["x-request-id"] = ctx.request_id
    for key, value in result.headers.items():
        headers[key.lower()] = value
    ctx.timings.first_byte = time.perf_counter()
    return web.Response(status=upstream.status, body=result.raw, headers=headers)


def render_reply(ctx: RequestContext, reply: Reply) -> web.Response:
    """A short-circuit reply as ``chat.completion`` JSON, or as an SSE stream if asked."""
    ctx.reply = reply
    model = reply.model or ctx.model or "floodgate"
    usage = reply.usage
    if usage is None:
        usage = Usage(estimate_prompt_tokens(ctx.body), estimate_text_tokens(reply.content))
        ctx.usage_estimated = True
    ctx.usage = usage
    ctx.status = 200
    set_degraded_header(ctx)
    headers = {"x-request-id": ctx.request_id, "x-floodgate-short-circuit": reply.source,
               **ctx.response_headers, **reply.headers}
    ctx.timings.first_byte = time.perf_counter()
    if ctx.stream:
        body = reply_stream(reply, endpoint=ctx.endpoint, model=model, usage=usage,
                            include_usage=ctx.include_usage)
        return web.Response(body=body, headers={**SSE_HEADERS, **headers})
    body = reply_json(reply, endpoint=ctx.endpoint, model=model, usage=usage)
    return web.Response(body=body, content_type="application/json", headers=headers)


def completion_estimate(data: dict[str, Any]) -> int:
    """Completion tokens of a response that reported no usage."""
    total = 0
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
            total += estimate_text_tokens(text if isinstance(text, str) else str(choice.get("text") or ""))
    return total
