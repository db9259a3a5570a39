"""The request's way through: parse, authenticate, short-circuit, route, admit,
attempts, respond, finished.

The core owns the mechanism only; every decision is a hook (see
``hookspecs.py``). One :class:`Gateway` exists per application.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .config import Config
from .dispatch import Hooks
from .errors import Rejection, error_body, error_response
from .metrics import CoreMetrics
from .relay import SSERelay, UpstreamStreamError
from .render import SSE_HEADERS, model_list, model_object, reply_json, reply_stream
from .tokens import estimate_prompt_tokens, estimate_text_tokens
from .types import Attempt, AttemptRecord, Reply, RequestContext, StreamChunk, Target, UpstreamResponse, Usage
from .upstream import UpstreamError, Upstreams, forwardable_headers, relayable_headers

log = logging.getLogger("floodgate")

MODEL_ENDPOINTS = ("chat/completions", "completions", "embeddings", "responses")
_SHORT_CIRCUIT_ENDPOINTS = frozenset({"chat/completions", "completions"})
_OPENAI_FRAMED = frozenset({"chat/completions", "completions"})
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REMOVE = object()


def _new_request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID_RE.match(given):
        return given
    return os.urandom(16).hex()


class Gateway:
    """Handles the OpenAI endpoints of one application."""

    def __init__(self, config: Config, hooks: Hooks, upstreams: Upstreams, metrics: CoreMetrics) -> None:
        self.config = config
        self.hooks = hooks
        self.upstreams = upstreams
        self.metrics = metrics
        self.max_body = config.server.max_body_bytes
        # Decided once: hooks nobody implements cost nothing per request.
        self._short_circuit = hooks.implemented("proxy_short_circuit")
        self._admit = hooks.implemented("proxy_admit")
        self._response_hook = hooks.implemented("proxy_response")
        self._chunk_hook = hooks.implemented("proxy_stream_chunk")
        self.default_upstream = next(iter(config.upstreams))

    # -- entry points -------------------------------------------------------
    def model_handler(self, endpoint: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, endpoint, self._model_request)
        return handler

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"]
        return await self._serve(request, f"passthrough:{path}", self._passthrough_request)

    async def _serve(self, request: web.Request, endpoint: str, process: Any) -> web.StreamResponse:
        ctx = RequestContext(
            request_id=_new_request_id(request), method=request.method, endpoint=endpoint,
            headers=request.headers, config=self.config,
        )
        self.metrics.in_flight.inc()
        response: web.StreamResponse | None = None
        try:
            try:
                response = await process(request, ctx)
            except Rejection as rejection:
                response = self._reject(ctx, rejection)
            except Exception:
                log.exception("request %s failed inside the proxy", ctx.request_id)
                response = self._reject(ctx, Rejection(500, "internal error in the gateway", code="internal_error",
                                                       type="server_error"))
            if not response.prepared:
                await response.prepare(request)
                await response.write_eof()
        except asyncio.CancelledError:
            self._disconnected(ctx)
            if ctx.attempts and ctx.usage is None:
                # The upstream saw the prompt before we cancelled it: account for it.
                ctx.usage = Usage(estimate_prompt_tokens(ctx.body), 0)
                ctx.usage_estimated = True
            raise
        except ConnectionResetError:
            self._disconnected(ctx)
        finally:
            ctx.timings.done = time.perf_counter()
            self.metrics.in_flight.dec()
            await self.hooks.observe("proxy_finished", ctx=ctx)
        return response if response is not None else web.Response(status=499)

    @staticmethod
    def _disconnected(ctx: RequestContext) -> None:
        ctx.client_disconnected = True
        ctx.status = 499  # "client closed request"
        ctx.error = ctx.error or "client_disconnected"

    def _reject(self, ctx: RequestContext, rejection: Rejection) -> web.Response:
        ctx.status = rejection.status
        ctx.error = rejection.code or rejection.type
        response = error_response(rejection, ctx.request_id)
        for key, value in ctx.response_headers.items():
            response.headers.setdefault(key, value)
        return response

    # -- model endpoints ----------------------------------------------------
    async def _read_body(self, request: web.Request, ctx: RequestContext) -> None:
        if request.content_length is not None and request.content_length > self.max_body:
            raise Rejection(413, f"request body is larger than {self.max_body} bytes", code="request_too_large",
                            should_retry=False)
        try:
            # Bounded by the application's client_max_size (= max_body_bytes).
            ctx.raw = await request.read() if request.body_exists else b""
        except web.HTTPRequestEntityTooLarge:
            raise Rejection(413, f"request body is larger than {self.max_body} bytes", code="request_too_large",
                            should_retry=False) from None
        except aiohttp.ClientError as exc:  # broken chunked upload
            raise Rejection(400, f"could not read the request body: {type(exc).__name__}") from None

    async def _parse(self, request: web.Request, ctx: RequestContext) -> None:
        if request.method != "POST":
            raise Rejection(405, f"method {request.method} is not allowed on /v1/{ctx.endpoint}; use POST",
                            code="method_not_allowed", should_retry=False, headers={"Allow": "POST"})
        await self._read_body(request, ctx)
        try:
            body = orjson.loads(ctx.raw)
        except orjson.JSONDecodeError as exc:
            raise Rejection(400, f"the request body is not valid JSON: {exc.args[0] if exc.args else exc}",
                            code="invalid_json", should_retry=False) from None
        if not isinstance(body, dict):
            raise Rejection(400, "the request body must be a JSON object", param="body", code="invalid_type",
                            should_retry=False)
        ctx.body = body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Rejection(400, "you must provide a model parameter (a string)", param="model",
                            code="missing_required_parameter" if model is None else "invalid_type",
                            should_retry=False)
        ctx.model = model
        if ctx.endpoint == "chat/completions":
            messages = body.get("messages")
            if not isinstance(messages, list):
                raise Rejection(400, "'messages' must be a list of message objects", param="messages",
                                code="missing_required_parameter" if messages is None else "invalid_type",
                                should_retry=False)
            if not messages:
                raise Rejection(400, "'messages' must contain at least one message", param="messages",
                                code="invalid_value", should_retry=False)
        elif ctx.endpoint in ("completions", "embeddings"):
            key = "prompt" if ctx.endpoint == "completions" else "input"
            if key not in body:
                raise Rejection(400, f"'{key}' is required", param=key, code="missing_required_parameter",
                                should_retry=False)
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise Rejection(400, "'stream' must be a boolean", param="stream", code="invalid_type",
                            should_retry=False)
        ctx.stream = bool(stream) and ctx.endpoint != "embeddings"

    async def _model_request(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        await self._parse(request, ctx)
        hooks = self.hooks
        ctx.principal = await hooks.first_result("proxy_authenticate", ctx=ctx)
        if self._short_circuit and ctx.endpoint in _SHORT_CIRCUIT_ENDPOINTS:
            reply = await hooks.first_result("proxy_short_circuit", ctx=ctx)
            if reply is not None:
                return self._render_reply(ctx, reply)
        ctx.route = await hooks.first_result("proxy_route", ctx=ctx)
        if self._admit:
            await hooks.call_all("proxy_admit", ctx=ctx)
        return await self._attempts(request, ctx)

    def _render_reply(self, ctx: RequestContext, reply: Reply) -> web.Response:
        ctx.reply = reply
        model = reply.model or ctx.model or "floodgate"
        usage = reply.usage
        if usage is None:
            usage = Usage(estimate_prompt_tokens(ctx.body), estimate_text_tokens(reply.content))
            ctx.usage_estimated = True
        ctx.usage = usage
        ctx.status = 200
        headers = {"x-request-id": ctx.request_id, "x-floodgate-short-circuit": reply.source,
                   **ctx.response_headers, **reply.headers}
        ctx.timings.first_byte = time.perf_counter()
        if ctx.stream:
            body = reply_stream(reply, endpoint=ctx.endpoint, model=model, usage=usage,
                                include_usage=ctx.include_usage)
            return web.Response(body=body, headers={**SSE_HEADERS, **headers})
        body = reply_json(reply, endpoint=ctx.endpoint, model=model, usage=usage)
        return web.Response(body=body, content_type="application/json", headers=headers)

    def _upstream_body(self, ctx: RequestContext, target: Target) -> tuple[bytes, bool]:
        """The bytes to send for ``target``; untouched unless something must change.

        Returns the body and whether the usage chunk must be hidden from the client.
        """
        changes: dict[str, Any] = {}
        if target.upstream_model != ctx.model:
            changes["model"] = target.upstream_model
        if target.overrides:
            changes.update(target.overrides)
        hide_usage = False
        if ctx.stream and ctx.endpoint in _OPENAI_FRAMED:
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

    def _set_route_headers(self, ctx: RequestContext, target: Target) -> None:
        headers = ctx.response_headers
        headers["x-floodgate-model"] = target.model
        if ctx.route is not None:
            headers["x-floodgate-route"] = ctx.route.name
        headers["x-floodgate-attempts"] = str(len(ctx.attempts))

    async def _attempts(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        last_error: UpstreamError | None = None
        forward = forwardable_headers(request.headers)
        while True:
            attempt = await self.hooks.first_result("proxy_next_attempt", ctx=ctx)
            if not isinstance(attempt, Attempt):
                break
            if attempt.delay > 0:
                await asyncio.sleep(attempt.delay)
            target = attempt.target
            record = AttemptRecord(target, started=time.perf_counter())
            ctx.attempts.append(record)
            body, hide_usage = self._upstream_body(ctx, target)
            timeouts = self.config.timeouts(target, attempt.timeout)
            try:
                upstream = await self.upstreams.open(target.upstream, "POST", ctx.endpoint, body=body,
                                                     headers=forward, timeouts=timeouts)
            except UpstreamError as exc:
                self._record_failure(ctx, record, exc)
                last_error = exc
                continue
            record.status = upstream.status
            try:
                if ctx.stream:
                    response = await self._stream(request, ctx, record, upstream, hide_usage, timeouts.first_byte,
                                                  timeouts.total)
                else:
                    response = await self._complete(ctx, record, upstream, timeouts.total)
            except UpstreamError as exc:
                self._record_failure(ctx, record, exc)
                last_error = exc
                continue
            return response
        if ctx.attempts:
            self._set_route_headers(ctx, ctx.attempts[-1].target)
        if last_error is not None:
            raise last_error.to_rejection()
        raise Rejection(503, "no upstream is available for this model right now", code="no_upstream_available",
                        type="server_error")

    def _record_failure(self, ctx: RequestContext, record: AttemptRecord, exc: UpstreamError) -> None:
        record.ended = time.perf_counter()
        record.error = exc.kind
        record.status = exc.status
        record.detail = exc.detail
        record.retry_after = exc.retry_after
        ctx.timings.upstream += record.duration
        log.debug("request %s attempt %d on %s failed: %s", ctx.request_id, len(ctx.attempts),
                  record.target.model, exc.detail)

    async def _complete(self, ctx: RequestContext, record: AttemptRecord, upstream: aiohttp.ClientResponse,
                        total_timeout: float) -> web.Response:
        try:
            async with asyncio.timeout(max(0.001, total_timeout - (time.perf_counter() - record.started))):
                raw = await upstream.read()
        except TimeoutError:
            raise UpstreamError("timeout", f"the response did not complete within {total_timeout:g}s",
                                status=upstream.status) from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            raise UpstreamError("invalid_body", f"upstream body was cut short ({type(exc).__name__})",
                                status=upstream.status) from None
        finally:
            upstream.release()
        record.ended = time.perf_counter()
        ctx.timings.upstream += record.duration
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            from .upstream import excerpt
            raise UpstreamError("invalid_body", f"upstream returned HTTP {upstream.status} with a body that is "
                                f"not JSON: {excerpt(raw)}", status=upstream.status) from None
        usage = Usage.from_openai(data.get("usage")) if isinstance(data, dict) else None
        if usage is None and isinstance(data, dict):
            usage = Usage(estimate_prompt_tokens(ctx.body), _completion_estimate(data))
            ctx.usage_estimated = True
        ctx.usage = usage
        self._set_route_headers(ctx, record.target)
        result = UpstreamResponse(upstream.status, {}, raw, data)
        if self._response_hook:
            await self.hooks.call_all("proxy_response", ctx=ctx, response=result)
        ctx.status = upstream.status
        headers = relayable_headers(upstream.headers)
        headers.update(ctx.response_headers)
        headers["x-request-id"] = ctx.request_id
        headers.update(result.headers)
        ctx.timings.first_byte = time.perf_counter()
        return web.Response(status=upstream.status, body=result.raw, headers=headers)

    async def _stream(self, request: web.Request, ctx: RequestContext, record: AttemptRecord,
                      upstream: aiohttp.ClientResponse, hide_usage: bool, first_byte_timeout: float,
                      total_timeout: float) -> web.StreamResponse:
        on_chunk = None
        if self._chunk_hook:
            def on_chunk(chunk: StreamChunk) -> None:
                self.hooks.call_all_sync("proxy_stream_chunk", ctx=ctx, chunk=chunk)
        relay = SSERelay(openai_framing=ctx.endpoint in _OPENAI_FRAMED, hide_usage=hide_usage, on_chunk=on_chunk)
        content = upstream.content
        # Before the first byte reaches the client every failure is retryable.
        first = b""
        try:
            async with asyncio.timeout(first_byte_timeout):
                while not first:
                    data = await content.readany()
                    if not data:
                        raise UpstreamError("invalid_body", "upstream stream ended before its first event",
                                            status=upstream.status)
                    first = relay.feed(data)
        except TimeoutError:
            upstream.close()
            raise UpstreamError("timeout", f"no stream event within {first_byte_timeout:g}s",
                                status=upstream.status) from None
        except UpstreamStreamError as exc:
            upstream.close()
            raise UpstreamError("invalid_body", f"upstream stream started with an error: {exc}",
                                status=upstream.status) from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            upstream.close()
            raise UpstreamError("connect", f"upstream stream broke before its first event ({type(exc).__name__})",
                                status=upstream.status) from None
        except BaseException:
            upstream.close()
            raise

        self._set_route_headers(ctx, record.target)
        headers = {**SSE_HEADERS, **ctx.response_headers, "x-request-id": ctx.request_id}
        response = web.StreamResponse(status=200, headers=headers)
        ctx.status = 200
        failure: str | None = None
        try:
            await response.prepare(request)
            await response.write(first)
            ctx.timings.first_byte = time.perf_counter()
            remaining = max(0.0, total_timeout - (time.perf_counter() - record.started))
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
                failure = f"the stream did not complete within {total_timeout:g}s"
                record.error = "timeout"
            except (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                failure = f"the upstream stream broke ({type(exc).__name__})"
                record.error = "invalid_body"
            if failure is None and ctx.endpoint in _OPENAI_FRAMED and not relay.done:
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

    # -- model list ---------------------------------------------------------
    async def models(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "models", self._models_request)

    async def _models_request(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        if request.method != "GET":
            raise Rejection(405, f"method {request.method} is not allowed here; use GET",
                            code="method_not_allowed", should_retry=False, headers={"Allow": "GET"})
        ctx.principal = await self.hooks.first_result("proxy_authenticate", ctx=ctx)
        model_id = request.match_info.get("model_id")
        if model_id is None:
            body = model_list(self.config)
        elif (self.config.resolve(model_id) is not None or model_id in self.config.aliases
              or model_id in self.config.route_names):
            ctx.model = model_id
            body = orjson.dumps(model_object(model_id))
        else:
            raise self.config.unknown_model(model_id)
        ctx.status = 200
        return web.Response(body=body, content_type="application/json",
                            headers={"x-request-id": ctx.request_id, **ctx.response_headers})

    # -- passthrough --------------------------------------------------------
    async def _passthrough_request(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        """Any other ``/v1/*`` path: relayed to the default upstream as it is."""
        await self._read_body(request, ctx)
        ctx.principal = await self.hooks.first_result("proxy_authenticate", ctx=ctx)
        upstream_name = self.default_upstream
        target = Target(model="-", upstream=upstream_name, upstream_model="-")
        record = AttemptRecord(target, started=time.perf_counter())
        ctx.attempts.append(record)
        timeouts = self.config.timeouts(target)
        try:
            upstream = await self.upstreams.open(
                upstream_name, request.method, request.match_info["tail"], body=ctx.raw if ctx.raw else None,
                headers=forwardable_headers(request.headers), timeouts=timeouts, query=request.query_string)
        except UpstreamError as exc:
            self._record_failure(ctx, record, exc)
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


def _completion_estimate(data: dict[str, Any]) -> int:
    """Completion tokens of a response that reported no usage."""
    total = 0
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
            total += estimate_text_tokens(text if isinstance(text, str) else str(choice.get("text") or ""))
    return total
