"""Any path the gateway does not implement: governed, then relayed to the default upstream.

Passthrough is governed like a model call: the caller is authenticated from the
headers, authorised (``proxy_authorize``: e.g. which endpoints a key may reach),
admitted (rate limits, budgets) and recorded (``proxy_finished``: endpoint,
status, bytes). JSON bodies are read (bounded) so plugins can see their
``model``; any other body (a multipart upload) is streamed upstream with its
``Content-Type``, never buffered whole, and cut off past ``max_body_bytes``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web

from ..config import Config
from ..errors import Rejection
from ..hooks import Hooks
from ..hookspecs import proxy_admit, proxy_authorize
from ..types import AttemptRecord, EndpointKind, RequestContext, Target
from ..upstream import UpstreamError, Upstreams, forwardable_headers, relayable_headers
from .attempts import record_failure
from .metering import UsageMeter
from .parse import read_body, too_large

_JSON_TYPES = ("application/json", "text/json")


class _BodyTooLarge(Exception):
    """The streamed body passed ``max_body_bytes`` (the upload to the upstream is aborted)."""


class Passthrough:
    """Relays requests the gateway does not implement to the first upstream."""

    def __init__(self, config: Config, hooks: Hooks, upstreams: Upstreams) -> None:
        self.config = config
        self.hooks = hooks
        self.upstreams = upstreams
        self.max_body = config.server.max_body_bytes
        self.body_timeout = config.server.timeouts.body
        self.upstream = next(iter(config.upstreams))
        self.timeouts = config.upstream_timeouts(self.upstream)
        self._authorize = hooks.implemented(proxy_authorize)
        self._admit = hooks.implemented(proxy_admit)

    async def serve(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        ctx.principal = await self.hooks.authenticate(ctx)
        if request.content_length is not None and request.content_length > self.max_body:
            raise too_large(self.max_body)
        content_type = request.headers.get("Content-Type")
        streamed = request.body_exists and not (content_type or "").lower().startswith(_JSON_TYPES)
        if request.body_exists and not streamed:
            await read_body(request, ctx, self.max_body, self.body_timeout)
            ctx.request_bytes = len(ctx.raw)
            _read_model(ctx)
        return await self.relay(request, ctx, streamed=streamed)

    async def relay(self, request: web.Request, ctx: RequestContext, *, streamed: bool) -> web.StreamResponse:
        """Authorise, admit and relay a request whose caller is known (and JSON body, if any, read).

        :param streamed: the body is not read yet: stream it upstream as it arrives.
        """
        hooks = self.hooks
        ctx.kind = EndpointKind.PASSTHROUGH
        if self._authorize:
            await hooks.authorize(ctx)
        if self._admit:
            await hooks.admit(ctx)
        target = Target(model="-", upstream=self.upstream, upstream_model="-")
        record = AttemptRecord(target, started=time.perf_counter())
        ctx.attempts.append(record)
        timeouts = self.timeouts
        too_big: list[bool] = []
        body: bytes | AsyncIterator[bytes] | None = (
            self._stream_body(request, ctx, too_big) if streamed else (ctx.raw if ctx.raw else None))
        try:
            upstream = await self.upstreams.open(
                self.upstream, request.method, ctx.endpoint, body=body,
                content_type=request.headers.get("Content-Type"),
                headers=forwardable_headers(request.headers), timeouts=timeouts,
                query=request.raw_path.partition("?")[2])
        except UpstreamError as exc:
            record_failure(ctx, record, exc)
            if too_big:
                raise too_large(self.max_body) from None
            raise exc.to_rejection() from None
        headers = relayable_headers(upstream.headers)
        headers["x-request-id"] = ctx.request_id
        if "Content-Type" in upstream.headers:
            headers["Content-Type"] = upstream.headers["Content-Type"]
        response = web.StreamResponse(status=upstream.status, headers=headers)
        ctx.status = upstream.status
        meter = UsageMeter.of(ctx, upstream.headers.get("Content-Type", ""))
        try:
            await response.prepare(request)
            async with asyncio.timeout(timeouts.total):
                async for data in upstream.content.iter_any():
                    ctx.response_bytes += len(data)
                    if meter is not None:
                        meter.feed(data)
                    await response.write(data)
            await response.write_eof()
        except (TimeoutError, aiohttp.ClientError):
            record.error = "invalid_body"
            ctx.error = "upstream_stream_error"
        finally:
            upstream.close()
            record.ended = time.perf_counter()
            ctx.timings.upstream += record.duration
            if meter is not None:
                meter.settle(ctx, record, self.config)
        return response

    async def _stream_body(self, request: web.Request, ctx: RequestContext,
                           too_big: list[bool]) -> AsyncIterator[bytes]:
        """The client's body as it arrives: bounded in size, and in time like any body."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        content = request.content
        while True:
            try:
                chunk = await asyncio.wait_for(content.readany(), max(0.001, deadline - loop.time()))
            except TimeoutError:
                raise Rejection(408, f"the request body did not arrive within {self.body_timeout:g}s",
                                code="request_timeout", headers={"Connection": "close"}) from None
            if not chunk:
                return
            ctx.request_bytes += len(chunk)
            if ctx.request_bytes > self.max_body:
                too_big.append(True)
                raise _BodyTooLarge()
            yield chunk


def _read_model(ctx: RequestContext) -> None:
    """``ctx.body`` and ``ctx.model`` of a JSON passthrough body, when it has them (never an error:
    the upstream judges the body)."""
    try:
        body = orjson.loads(ctx.raw) if ctx.raw else None
    except orjson.JSONDecodeError:
        return
    if isinstance(body, dict):
        ctx.body = body
        model = body.get("model")
        ctx.model = model if isinstance(model, str) else None
