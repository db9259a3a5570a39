"""Stage 6, attempts: ask ``proxy_next_attempt`` what to try, send it, record the outcome.

The core owns the mechanism only: the retry plugin (or the core's default, "the
first target once") decides what comes next. Every try is appended to
``ctx.attempts``; a success is answered by :mod:`.respond` (JSON) or
:mod:`.stream` (SSE).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from ..config import Config
from ..errors import Rejection
from ..hooks import Hooks
from ..hookspecs import proxy_response, proxy_stream_chunk
from ..types import Attempt, AttemptRecord, RequestContext, Target
from ..upstream import UpstreamError, Upstreams, forwardable_headers
from .respond import complete, set_route_headers
from .stream import relay_stream

log = logging.getLogger("floodgate")

#: Endpoints whose streams use OpenAI's chat framing (``data:`` lines, ``[DONE]``).
OPENAI_FRAMED = frozenset({"chat/completions", "completions"})
_REMOVE = object()


def record_failure(ctx: RequestContext, record: AttemptRecord, exc: UpstreamError) -> None:
    record.ended = time.perf_counter()
    record.error = exc.kind
    record.status = exc.status
    record.detail = exc.detail
    record.retry_after = exc.retry_after
    ctx.timings.upstream += record.duration
    log.debug("request %s attempt %d on %s failed: %s", ctx.request_id, len(ctx.attempts),
              record.target.model, exc.detail)


class AttemptRunner:
    """Runs the attempts of one application's model requests."""

    def __init__(self, config: Config, hooks: Hooks, upstreams: Upstreams) -> None:
        self.config = config
        self.hooks = hooks
        self.upstreams = upstreams
        # Decided once: hooks nobody implements cost nothing per request.
        self._response_hook = hooks.implemented(proxy_response)
        self._chunk_hook = hooks.implemented(proxy_stream_chunk)

    def upstream_body(self, ctx: RequestContext, target: Target) -> tuple[bytes, bool]:
        """The bytes to send for ``target``; untouched unless something must change.

        Returns the body and whether the usage chunk must be hidden from the client.
        """
        changes: dict[str, Any] = {}
        if target.upstream_model != ctx.model:
            changes["model"] = target.upstream_model
        if target.overrides:
            changes.update(target.overrides)
        hide_usage = False
        if ctx.stream and ctx.endpoint in OPENAI_FRAMED:
            if self.config.upstreams[target.upstream].stream_options:
                if not ctx.include_usage:
                    options = ctx.body.get("stream_options")
                    changes["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                                 "include_usage": True}
                    hide_usage = True
            elif "stream_options" in ctx.body:
                changes["stream_options"] = _REMOVE
        if not changes:
            return ctx.raw, hide_usage
        body = dict(ctx.body)
        for key, value in changes.items():
            if value is _REMOVE:
                body.pop(key, None)
            else:
                body[key] = value
        return orjson.dumps(body), hide_usage

    async def run(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        last_error: UpstreamError | None = None
        forward = forwardable_headers(request.headers)
        hooks = self.hooks
        while True:
            attempt = await hooks.next_attempt(ctx)
            if not isinstance(attempt, Attempt):
                break
            if attempt.delay > 0:
                await asyncio.sleep(attempt.delay)
            target = attempt.target
            record = AttemptRecord(target, started=time.perf_counter())
            ctx.attempts.append(record)
            body, hide_usage = self.upstream_body(ctx, target)
            timeouts = self.config.timeouts(target, attempt.timeout)
            try:
                upstream = await self.upstreams.open(target.upstream, "POST", ctx.endpoint, body=body,
                                                     headers=forward, timeouts=timeouts)
                record.status = upstream.status
                if ctx.stream:
                    on_chunk = (lambda chunk: hooks.stream_chunk(ctx, chunk)) if self._chunk_hook else None
                    return await relay_stream(request, ctx, record, upstream, hide_usage=hide_usage,
                                              openai_framing=ctx.endpoint in OPENAI_FRAMED, on_chunk=on_chunk,
                                              timeouts=timeouts)
                return await complete(ctx, record, upstream, timeouts.total,
                                      hooks if self._response_hook else None)
            except UpstreamError as exc:
                record_failure(ctx, record, exc)
                last_error = exc
        if ctx.attempts:
            set_route_headers(ctx, ctx.attempts[-1].target)
        if last_error is not None:
            raise last_error.to_rejection()
        raise Rejection(503, "no upstream is available for this model right now", code="no_upstream_available",
                        type="server_error")
