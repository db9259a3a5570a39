"""Stage 6, attempts: ask ``proxy_next_attempt`` what to try, send it, record the outcome.

The core owns the mechanism only: the retry plugin (or the core's default, "the
first target once") decides what comes next, and whether and how to hedge.
Every try is appended to ``ctx.attempts`` when it starts. A try is first
*prepared* — sent, and read up to its first meaningful answer (a stream's first
event carrying content, a tool call, a refusal or a finish; a whole JSON answer)
— and only then *committed*: answered by :mod:`.respond` (JSON) or relayed by
:mod:`.stream` (SSE). Every failure before the commit can be retried.

Hedging: an :class:`~proxy.types.Attempt` with ``hedge_after`` that has not
prepared within that many seconds makes the core ask ``proxy_hedge`` for a second
attempt (unless a plugin says it is overloaded, ``proxy_overloaded``); both run
concurrently, the first prepared is committed, the other is cancelled and kept
in ``ctx.attempts`` as the race's loser (``error="cancelled"``, usage estimated).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import ClientResponse, web

from ..config import AttemptTimeouts, Config
from ..errors import Rejection
from ..hooks import Hooks
from ..hookspecs import (
    proxy_attempt_result,
    proxy_attempt_started,
    proxy_hedge,
    proxy_overloaded,
    proxy_response,
    proxy_stream_chunk,
)
from ..types import Attempt, AttemptRecord, RequestContext, Target, Usage
from ..upstream import UpstreamError, Upstreams, Watchdog, forwardable_headers
from ..upstream.client import first_byte_timeout
from .respond import complete, read_answer, set_route_headers
from .sse import SSERelay
from .stream import await_content, estimate_usage, relay_committed

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
    if exc.headers is not None:
        record.upstream_headers = exc.headers
    ctx.timings.upstream += record.duration
    log.debug("request %s attempt %d on %s failed: %s", ctx.request_id, len(ctx.attempts),
              record.target.model, exc.detail)


@dataclass(slots=True, eq=False)
class Prepared:
    """An attempt whose first meaningful answer has come, not yet sent to the client."""

    record: AttemptRecord
    upstream: ClientResponse
    timeouts: AttemptTimeouts
    deadline: float  # event loop time at which its ``total`` runs out
    relay: SSERelay | None = None  # streams: the relay and the events held so far
    held: list[bytes] | None = None
    raw: bytes = b""  # JSON answers: the bytes and their parse
    data: Any = None

    def discard(self, ctx: RequestContext) -> None:
        """It lost a hedge race after preparing too: close it, estimate what it cost."""
        self.upstream.close()
        relay = self.relay
        self.record.usage = estimate_usage(ctx, relay) if relay is not None else Usage(
            ctx.estimated_prompt_tokens(), 0)
        self.record.usage_estimated = True


class AttemptRunner:
    """Runs the attempts of one application's model requests."""

    def __init__(self, config: Config, hooks: Hooks, upstreams: Upstreams) -> None:
        self.config = config
        self.hooks = hooks
        self.upstreams = upstreams
        # Decided once: hooks nobody implements cost nothing per request.
        self._response_hook = hooks.implemented(proxy_response)
        self._chunk_hook = hooks.implemented(proxy_stream_chunk)
        self._hedge_hook = hooks.implemented(proxy_hedge)
        self._overload_hook = hooks.implemented(proxy_overloaded)
        self._result_hook = hooks.implemented(proxy_attempt_result)
        self._started_hook = hooks.implemented(proxy_attempt_started)

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
        while True:
            attempt = await self.hooks.next_attempt(ctx)
            if not isinstance(attempt, Attempt):
                break
            if attempt.delay > 0:
                await asyncio.sleep(attempt.delay)
            try:
                if attempt.hedge_after is not None and self._hedge_hook:
                    ready = await self._race(ctx, attempt, forward)
                else:
                    ready = await self._prepare(ctx, self._start(ctx, attempt), attempt, forward)
            except UpstreamError as exc:
                last_error = exc
                continue
            return await self._commit(request, ctx, ready)
        if ctx.attempts:
            set_route_headers(ctx, ctx.attempts[-1].target)
        if last_error is not None:
            raise last_error.to_rejection()
        raise Rejection(503, "no upstream is available for this model right now", code="no_upstream_available",
                        type="server_error")

    def _start(self, ctx: RequestContext, attempt: Attempt) -> AttemptRecord:
        record = AttemptRecord(attempt.target, started=time.perf_counter())
        ctx.attempts.append(record)
        if self._started_hook:
            self.hooks.attempt_started(ctx, record)
        return record

    async def _prepare(self, ctx: RequestContext, record: AttemptRecord, attempt: Attempt,
                       forward: dict[str, str]) -> Prepared:
        """Send one attempt and read it up to its first meaningful answer."""
        target = attempt.target
        body, hide_usage = self.upstream_body(ctx, target)
        timeouts = self.config.timeouts(target, attempt.timeout)
        sent = asyncio.get_running_loop().time()
        # One first_byte budget from sending to the first meaningful answer, headers included;
        # one timer for the attempt (its deadline moves to ``total`` once a JSON answer's headers are in).
        first_byte = sent + min(timeouts.first_byte, timeouts.total)
        watchdog = Watchdog(None, first_byte)
        upstream: ClientResponse | None = None
        try:
            try:
                upstream = await self.upstreams.send(target.upstream, "POST", ctx.endpoint, body=body,
                                                     headers=forward, timeouts=timeouts)
                record.status = upstream.status
                record.upstream_headers = upstream.headers
                ready = Prepared(record, upstream, timeouts, sent + timeouts.total)
                if ctx.stream:
                    hooks = self.hooks
                    on_chunk = (lambda chunk: hooks.stream_chunk(ctx, chunk)) if self._chunk_hook else None
                    ready.relay = SSERelay(openai_framing=ctx.endpoint in OPENAI_FRAMED, hide_usage=hide_usage,
                                           on_chunk=on_chunk)
                    ready.held = await await_content(upstream, ready.relay, timeouts, deadline=first_byte,
                                                     record=record, watchdog=watchdog)
                else:
                    watchdog.deadline = ready.deadline
                    ready.raw, ready.data = await read_answer(upstream)
                    record.ended = time.perf_counter()
            except asyncio.CancelledError:
                if not watchdog.caught():
                    if upstream is not None:
                        upstream.close()
                    raise
                if upstream is None:
                    raise first_byte_timeout(timeouts) from None
                upstream.close()
                raise UpstreamError("timeout", f"the response did not complete within {timeouts.total:g}s",
                                    status=upstream.status) from None
            finally:
                watchdog.close()
        except UpstreamError as exc:
            record_failure(ctx, record, exc)
            if self._result_hook:
                self.hooks.attempt_result(ctx, record)
            raise
        record.first_event = time.perf_counter()
        if self._result_hook:
            self.hooks.attempt_result(ctx, record)
        return ready

    async def _commit(self, request: web.Request, ctx: RequestContext, ready: Prepared) -> web.StreamResponse:
        if ready.relay is not None:
            assert ready.held is not None
            return await relay_committed(request, ctx, ready.record, ready.upstream, ready.relay, ready.held,
                                         openai_framing=ctx.endpoint in OPENAI_FRAMED, timeouts=ready.timeouts,
                                         deadline=ready.deadline)
        return await complete(ctx, ready.record, ready.upstream, ready.raw, ready.data,
                              self.hooks if self._response_hook else None)

    # -- hedging --------------------------------------------------------------
    async def _race(self, ctx: RequestContext, attempt: Attempt, forward: dict[str, str]) -> Prepared:
        """Prepare ``attempt``; if it is slower than ``hedge_after``, race a hedge against it."""
        first = self._start(ctx, attempt)
        tasks: dict[asyncio.Task[Prepared], AttemptRecord] = {
            asyncio.ensure_future(self._prepare(ctx, first, attempt, forward)): first}
        winner: asyncio.Task[Prepared] | None = None
        try:
            done, _ = await asyncio.wait(tasks, timeout=attempt.hedge_after)
            if not done and not (self._overload_hook and self.hooks.overloaded(ctx)):
                hedge = await self.hooks.hedge(ctx, first)
                if hedge is not None and not any(task.done() for task in tasks):
                    second = self._start(ctx, hedge)
                    first.hedged = second.hedged = second.hedge = True
                    tasks[asyncio.ensure_future(self._prepare(ctx, second, hedge, forward))] = second
            pending: set[asyncio.Task[Prepared]] = set(tasks)
            error: UpstreamError | None = None
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:  # in start order: on a tie the first attempt wins
                    if task in done:
                        exc = task.exception()
                        if exc is None:
                            winner = winner or task
                        elif isinstance(exc, UpstreamError):
                            error = exc
                        else:
                            raise exc
            if winner is None:
                assert error is not None
                raise error
            if winner is not next(iter(tasks)):
                ctx.timings.upstream += tasks[winner].started - first.started  # waited on both meanwhile
            return winner.result()
        finally:
            await self._end_race(ctx, tasks, winner)

    @staticmethod
    async def _end_race(ctx: RequestContext, tasks: dict[asyncio.Task[Prepared], AttemptRecord],
                        winner: asyncio.Task[Prepared] | None) -> None:
        """Cancel and record the attempts that did not win (all of them if the client left)."""
        losers = [task for task in tasks if task is not winner]
        for task in losers:
            task.cancel()
        await asyncio.gather(*losers, return_exceptions=True)
        now = time.perf_counter()
        detail = "lost the hedge race" if winner is not None else "cancelled: the client left"
        for task in losers:
            record = tasks[task]
            if task.cancelled():
                record.ended, record.error, record.detail = now, "cancelled", detail
                record.usage = Usage(ctx.estimated_prompt_tokens(), 0)  # the upstream saw the prompt
                record.usage_estimated = True
            elif task.exception() is None:  # prepared too, a moment later
                task.result().discard(ctx)
                record.ended, record.error, record.detail = now, "cancelled", detail
