"""Stage 7, respond (SSE): relay an upstream stream to the client, event by event.

Nothing is sent before the upstream's first event: until then every failure is
retryable and becomes a real HTTP status. After the first byte, an upstream
failure becomes one final ``data: {"error": ...}`` event and the stream closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from ..config import AttemptTimeouts
from ..errors import error_body
from ..tokens import estimate_prompt_tokens
from ..types import AttemptRecord, RequestContext, StreamChunk, Usage
from ..upstream import UpstreamError
from .render import SSE_HEADERS
from .respond import set_route_headers
from .sse import SSERelay, UpstreamStreamError

_BROKEN = (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


async def _first_event(relay: SSERelay, upstream: aiohttp.ClientResponse, timeout: float) -> bytes:
    """The bytes of the upstream's first complete event(s); any failure is an :class:`UpstreamError`."""
    content = upstream.content
    first = b""
    try:
        async with asyncio.timeout(timeout):
            while not first:
                data = await content.readany()
                if not data:
                    raise UpstreamError("invalid_body", "upstream stream ended before its first event",
                                        status=upstream.status)
                first = relay.feed(data)
    except TimeoutError:
        upstream.close()
        raise UpstreamError("timeout", f"no stream event within {timeout:g}s", status=upstream.status) from None
    except UpstreamStreamError as exc:
        upstream.close()
        raise UpstreamError("invalid_body", f"upstream stream started with an error: {exc}",
                            status=upstream.status) from None
    except _BROKEN as exc:
        upstream.close()
        raise UpstreamError("connect", f"upstream stream broke before its first event ({type(exc).__name__})",
                            status=upstream.status) from None
    except BaseException:
        upstream.close()
        raise
    return first


async def relay_stream(request: web.Request, ctx: RequestContext, record: AttemptRecord,
                       upstream: aiohttp.ClientResponse, *, hide_usage: bool, openai_framing: bool,
                       on_chunk: Callable[[StreamChunk], None] | None,
                       timeouts: AttemptTimeouts) -> web.StreamResponse:
    relay = SSERelay(openai_framing=openai_framing, hide_usage=hide_usage, on_chunk=on_chunk)
    first = await _first_event(relay, upstream, timeouts.first_byte)
    content = upstream.content
    set_route_headers(ctx, record.target)
    headers = {**SSE_HEADERS, **ctx.response_headers, "x-request-id": ctx.request_id}
    response = web.StreamResponse(status=200, headers=headers)
    ctx.status = 200
    failure: str | None = None
    try:
        await response.prepare(request)
        await response.write(first)
        ctx.timings.first_byte = time.perf_counter()
        remaining = max(0.0, timeouts.total - (time.perf_counter() - record.started))
        deadline = asyncio.get_running_loop().time() + remaining
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    data = await content.readany()
                    if not data:
                        break
                    out = relay.feed(data)
                    if out:
                        await response.write(out)
        except TimeoutError:
            failure = f"the stream did not complete within {timeouts.total:g}s"
            record.error = "timeout"
        except _BROKEN as exc:
            failure = f"the upstream stream broke ({type(exc).__name__})"
            record.error = "invalid_body"
        if failure is None and openai_framing and not relay.done:
            failure = "the upstream stream ended without [DONE]"
            record.error = "invalid_body"
        if failure is not None:
            ctx.error = "upstream_stream_error"
            record.detail = failure
            await response.write(b"data: " + error_body(failure, type="server_error",
                                                        code="upstream_stream_error") + b"\n\n")
        await response.write_eof()
    except (asyncio.CancelledError, ConnectionResetError):
        ctx.client_disconnected = True
        raise
    finally:
        upstream.close()
        record.ended = time.perf_counter()
        ctx.timings.upstream += record.duration
        if relay.usage is not None:
            ctx.usage = relay.usage
        else:
            # About one token per content event; the first event carries only the role.
            ctx.usage = Usage(estimate_prompt_tokens(ctx.body), max(0, relay.data_events - 1 - relay.done))
            ctx.usage_estimated = True
    return response
