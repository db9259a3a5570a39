"""Any other ``/v1/*`` path: relayed to the default upstream as it is."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from ..config import Config
from ..hooks import Hooks
from ..types import AttemptRecord, RequestContext, Target
from ..upstream import UpstreamError, Upstreams, forwardable_headers, relayable_headers
from .attempts import record_failure
from .parse import read_body


class Passthrough:
    """Relays requests the gateway does not implement to the first upstream."""

    def __init__(self, config: Config, hooks: Hooks, upstreams: Upstreams) -> None:
        self.config = config
        self.hooks = hooks
        self.upstreams = upstreams
        self.max_body = config.server.max_body_bytes
        self.upstream = next(iter(config.upstreams))

    async def serve(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        await read_body(request, ctx, self.max_body, self.config.server.timeouts.body)
        ctx.principal = await self.hooks.authenticate(ctx)
        target = Target(model="-", upstream=self.upstream, upstream_model="-")
        record = AttemptRecord(target, started=time.perf_counter())
        ctx.attempts.append(record)
        timeouts = self.config.timeouts(target)
        try:
            upstream = await self.upstreams.open(
                self.upstream, request.method, ctx.endpoint.removeprefix("passthrough:"),
                body=ctx.raw if ctx.raw else None, headers=forwardable_headers(request.headers), timeouts=timeouts,
                query=request.raw_path.partition("?")[2])
        except UpstreamError as exc:
            record_failure(ctx, record, exc)
            raise exc.to_rejection() from None
        headers = relayable_headers(upstream.headers)
        headers["x-request-id"] = ctx.request_id
        if "Content-Type" in upstream.headers:
            headers["Content-Type"] = upstream.headers["Content-Type"]
        response = web.StreamResponse(status=upstream.status, headers=headers)
        ctx.status = upstream.status
        try:
            await response.prepare(request)
            async with asyncio.timeout(timeouts.total):
                async for data in upstream.content.iter_any():
                    await response.write(data)
            await response.write_eof()
        except (TimeoutError, aiohttp.ClientError):
            record.error = "invalid_body"
            ctx.error = "upstream_stream_error"
        finally:
            upstream.close()
            record.ended = time.perf_counter()
            ctx.timings.upstream += record.duration
        return response
