"""Stage 7, respond (SSE): hold an upstream stream until it says something, then relay it.

Commit on content: the events before the first meaningful one (role-only or empty
deltas, ``response.created``/``in_progress``, comment lines) are held, not sent;
the 200 goes out with the first event carrying content, a tool call, a refusal
or a finish (:func:`await_content`). Until then every failure — a break, a stall,
an error event, an end — is an :class:`UpstreamError` the attempt loop may retry,
and the held events are discarded. Nothing is sent to the client before that,
on any endpoint: sending anything means sending the status, which is not known
yet. After it (:func:`relay_committed`) an upstream failure becomes one final
error event and the stream closes, with the usage estimated and marked.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from ..config import AttemptTimeouts
from ..errors import error_body
from ..types import AttemptRecord, RequestContext, Usage
from ..upstream import UpstreamError, Watchdog, excerpt
from .render import SSE_HEADERS
from .respond import set_route_headers
from .sse import SSERelay, UpstreamStreamError

_BROKEN = (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)
#: Events held before the first meaningful one, at most (count and bytes); past either
#: bound the stream is committed as it is (relayed, no longer retryable).
MAX_HELD_EVENTS = 64
MAX_HELD_BYTES = 64 * 1024
_EXCERPT_BYTES = 2048


async def _refuse_non_sse(upstream: aiohttp.ClientResponse) -> None:
    """A stream request answered with something other than an SSE stream: a protocol error
    (deterministic: the same request gets the same answer)."""
    try:
        raw = await upstream.content.read(_EXCERPT_BYTES)
    except aiohttp.ClientError:
        raw = b""
    what = upstream.headers.get("Content-Type", "no content type")
    detail = f"upstream answered a stream request with {what}, not an SSE stream"
    if raw:
        detail += f": {excerpt(raw)}"
    raise UpstreamError("protocol", detail, status=upstream.status)


async def await_content(upstream: aiohttp.ClientResponse, relay: SSERelay, timeouts: AttemptTimeouts, *,
                        deadline: float, record: AttemptRecord, watchdog: Watchdog | None = None) -> list[bytes]:
    """Read the stream until its first meaningful event; return the held events (it last).

    :param deadline: event loop time by which it must come (``first_byte`` after sending).
    :param watchdog: the attempt's timer, if it has one already (it is closed here).
    Every failure closes the upstream response and raises :class:`UpstreamError`; the
    events held so far are counted in ``record.discarded``.
    """
    held: list[bytes] = []
    size = 0
    try:
        if watchdog is None:
            watchdog = Watchdog(None, deadline)
        if upstream.content_type != "text/event-stream":
            await _refuse_non_sse(upstream)
        content = upstream.content
        while not relay.meaningful:
            data = await content.readany()
            if not data:
                what = "its first event" if not relay.events else "any content"
                raise UpstreamError("invalid_body", f"upstream stream ended before {what}", status=upstream.status)
            out = relay.feed(data)
            if out:
                if watchdog.stall is None:
                    watchdog.watch_stalls(timeouts.stall)
                else:
                    watchdog.touch()
                held.append(out)
                size += len(out)
                if relay.events > MAX_HELD_EVENTS or size > MAX_HELD_BYTES:
                    relay.meaningful = True  # commit as it is: memory stays bounded
        return held
    except asyncio.CancelledError:
        if watchdog is None or not watchdog.caught():
            upstream.close()
            raise
        upstream.close()
        record.discarded = relay.events
        if watchdog.expired == "stall":
            raise UpstreamError("stall", f"upstream stream stalled: no event for {timeouts.stall:g}s before "
                                "any content", status=upstream.status) from None
        raise UpstreamError("timeout", f"no content within the first_byte timeout ({timeouts.first_byte:g}s)",
                            status=upstream.status) from None
    except UpstreamStreamError as exc:
        upstream.close()
        record.discarded = relay.events
        raise UpstreamError("invalid_body", f"upstream stream failed before any content: {exc}",
                            status=upstream.status) from None
    except _BROKEN as exc:
        upstream.close()
        record.discarded = relay.events
        raise UpstreamError("connect", f"upstream stream broke before any content ({type(exc).__name__})",
                            status=upstream.status) from None
    except BaseException:
        upstream.close()
        record.discarded = relay.events
        raise
    finally:
        if watchdog is not None:
            watchdog.close()


def _error_event(message: str, *, openai_framing: bool) -> bytes:
    body = error_body(message, type="server_error", code="upstream_stream_error")
    return (b"data: " if openai_framing else b"event: error\ndata: ") + body + b"\n\n"


def estimate_usage(ctx: RequestContext, relay: SSERelay) -> Usage:
    """Usage of a stream that reported none: the prompt estimate, a token per content event."""
    return Usage(ctx.estimated_prompt_tokens(), relay.content_events + relay.meaningful)


async def relay_committed(request: web.Request, ctx: RequestContext, record: AttemptRecord,
                          upstream: aiohttp.ClientResponse, relay: SSERelay, held: list[bytes], *,
                          openai_framing: bool, timeouts: AttemptTimeouts,
                          deadline: float) -> web.StreamResponse:
    """Send the 200 with the held events, then relay the rest as it arrives.

    :param deadline: event loop time at which the attempt's ``total`` runs out.
    """
    set_route_headers(ctx, record.target)
    headers = {**SSE_HEADERS, **ctx.response_headers, "x-request-id": ctx.request_id}
    response = web.StreamResponse(status=200, headers=headers)
    ctx.status = 200
    record.committed = True
    failure: str | None = None
    try:
        await response.prepare(request)
        await response.write(b"".join(held))
        ctx.timings.first_byte = time.perf_counter()
        content = upstream.content
        watchdog = Watchdog(timeouts.stall, deadline)
        try:
            while True:
                data = await content.readany()
                if not data:
                    break
                watchdog.touch()
                out = relay.feed(data)
                if out:
                    watchdog.writing = True
                    await response.write(out)
                    watchdog.writing = False
                    watchdog.touch()
        except asyncio.CancelledError:
            if not watchdog.caught():
                raise
            if watchdog.expired == "stall":
                failure = f"the upstream stream stalled (no event for {timeouts.stall:g}s)"
                record.error = "stall"
            else:
                failure = f"the stream did not complete within {timeouts.total:g}s"
                record.error = "timeout"
        except _BROKEN as exc:
            failure = f"the upstream stream broke ({type(exc).__name__})"
            record.error = "invalid_body"
        finally:
            watchdog.close()
        if failure is None and not relay.complete:
            failure = ("the upstream stream ended before a finish_reason" if openai_framing
                       else "the upstream stream ended before its response.completed event")
            record.error = "invalid_body"
        if failure is not None:
            ctx.error = "upstream_stream_error"
            record.detail = failure
            await response.write(_error_event(failure, openai_framing=openai_framing))
        elif openai_framing and not relay.done:
            await response.write(b"data: [DONE]\n\n")  # ended cleanly after its finish: complete
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
            ctx.usage = estimate_usage(ctx, relay)
            ctx.usage_estimated = True
        record.usage, record.usage_estimated = ctx.usage, ctx.usage_estimated
    return response
