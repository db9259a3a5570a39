"""The stage sequence: parse, authenticate, short-circuit, route, admit, attempts,
respond, finished — and the request's life around it (context, errors, disconnects).

The core owns the mechanism only; every decision is a hook (see ``hookspecs.py``).
One :class:`Gateway` exists per application.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..config import Config
from ..errors import Rejection, error_response, shorten
from ..hooks import Hooks
from ..hookspecs import proxy_admit, proxy_authorize, proxy_short_circuit
from ..keys import SERVED
from ..metrics import CoreMetrics
from ..paths import check_headers, checked_path, passthrough_tail
from ..tokens import estimate_prompt_tokens
from ..types import EndpointKind, Principal, RequestContext, Usage
from ..upstream import Upstreams
from .attempts import AttemptRunner
from .models import ModelList, serve_models
from .parse import parse_model_request
from .passthrough import Passthrough
from .respond import render_reply, set_degraded_header

log = logging.getLogger("floodgate")

MODEL_ENDPOINTS = ("chat/completions", "completions", "embeddings", "responses")
_SHORT_CIRCUIT_ENDPOINTS = frozenset({"chat/completions", "completions"})
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_LOOKUP_METHODS = frozenset({"GET", "HEAD"})

#: The context of the request an admin endpoint is serving (``request[REQUEST_CONTEXT]``).
REQUEST_CONTEXT = web.RequestKey("floodgate.request_context", RequestContext)
#: The request path, decoded once and checked (:func:`proxy.paths.checked_path`).
REQUEST_PATH = web.RequestKey("floodgate.request_path", str)
#: Paths (relative to ``/v1``) the gateway answers itself; other paths pass through.
OWNED_PATHS = frozenset({*MODEL_ENDPOINTS, "models"})

Process = Callable[[web.Request, RequestContext], Awaitable[web.StreamResponse]]


def _new_request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID_RE.match(given):
        return given
    return os.urandom(16).hex()


class Gateway:
    """Handles every client-facing endpoint of one application."""

    def __init__(self, config: Config, hooks: Hooks, upstreams: Upstreams, metrics: CoreMetrics) -> None:
        self.config = config
        self.hooks = hooks
        self.metrics = metrics
        self.max_body = config.server.max_body_bytes
        self.body_timeout = config.server.timeouts.body
        self.attempts = AttemptRunner(config, hooks, upstreams)
        self.passthrough_relay = Passthrough(config, hooks, upstreams)
        self.model_list = ModelList(config, upstreams)
        # Decided once: hooks nobody implements cost nothing per request.
        self._short_circuit = hooks.implemented(proxy_short_circuit)
        self._admit = hooks.implemented(proxy_admit)
        self._authorize = hooks.implemented(proxy_authorize)

    # -- entry points -------------------------------------------------------
    def model_handler(self, endpoint: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.serve(request, endpoint, EndpointKind.MODEL, self._model_request)
        return handler

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        """Every method and path the gateway does not implement, with or without ``/v1``."""
        decoded = request[REQUEST_PATH]
        if decoded.startswith("/-/"):  # the gateway's own namespace: never the upstream's
            raise Rejection(404, f"unknown path {shorten(decoded, 64)}", code="not_found", should_retry=False)
        if "%2f" in request.raw_path.partition("?")[0].lower():  # only allowed in the gateway's model lookup
            raise Rejection(400, "invalid request path: encoded slashes are not allowed", code="invalid_path",
                            param="path", should_retry=False)
        path = passthrough_tail(decoded, OWNED_PATHS)
        return await self.serve(request, path, EndpointKind.PASSTHROUGH, self.passthrough_relay.serve)

    async def models(self, request: web.Request) -> web.StreamResponse:
        async def process(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
            return await serve_models(request, ctx, self.model_list, self.hooks)
        return await self.serve(request, "models", EndpointKind.MODELS, process)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The generation's only middleware (one layer: each costs a call chain per request).

        One routing truth: an ambiguous path, undecodable headers or an unreadable body
        encoding is refused before any hook runs. Admin endpoints (``/-/...``, plugins'
        included) run the normal request path: authenticated first, then ``proxy_finished``
        (access log, metrics) once they answered. A :class:`Rejection` raised by any
        handler — a plugin's endpoint included — is answered with OpenAI's JSON error
        shape, never aiohttp's plain-text 500.
        """
        served = request.app.get(SERVED)
        if served is not None and request.transport is not None:
            served.add(request.transport)  # its headers arrived: the headers deadline is met
        try:
            try:
                request[REQUEST_PATH] = checked_path(request.raw_path,
                                                     model_lookup=request.method in _LOOKUP_METHODS)
                check_headers(request.headers)
            except Rejection as rejection:
                self.metrics.requests("invalid_request", "-", str(rejection.status)).inc()
                raise
            if request.path.startswith("/-/"):
                return await self._admin(request, handler)
            return await handler(request)
        except Rejection as rejection:
            return error_response(rejection)

    async def _admin(self, request: web.Request, handler: Any) -> web.StreamResponse:
        async def process(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
            ctx.principal = await self.hooks.authenticate(ctx)
            request[REQUEST_CONTEXT] = ctx
            response: web.StreamResponse = await handler(request)
            ctx.status = response.status
            return response
        return await self.serve(request, request.path[1:], EndpointKind.ADMIN, process)

    # -- the request's life ----------------------------------------------------
    async def serve(self, request: web.Request, endpoint: str, kind: EndpointKind,
                    process: Process) -> web.StreamResponse:
        ctx = RequestContext(
            request_id=_new_request_id(request), method=request.method, endpoint=endpoint,
            headers=request.headers, config=self.config, kind=kind,
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
            _disconnected(ctx)
            _close_open_attempt(ctx)
            if ctx.attempts and ctx.usage is None:
                # The upstream saw the prompt before we cancelled it: account for it.
                ctx.usage = Usage(estimate_prompt_tokens(ctx.body), 0)
                ctx.usage_estimated = True
            raise
        except ConnectionResetError:
            _disconnected(ctx)
        finally:
            ctx.timings.done = time.perf_counter()
            self.metrics.in_flight.dec()
            await self.hooks.finished(ctx)
        return response if response is not None else web.Response(status=499)

    def _reject(self, ctx: RequestContext, rejection: Rejection) -> web.Response:
        ctx.status = rejection.status
        ctx.error = rejection.code or rejection.type
        set_degraded_header(ctx)  # a request shed under overload says so
        response = error_response(rejection, ctx.request_id)
        for key, value in ctx.response_headers.items():
            response.headers.setdefault(key, value)
        return response

    async def _model_request(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        """The stages of a model call, in order."""
        hooks = self.hooks
        ctx.principal = await hooks.authenticate(ctx)  # from the headers: no body read for a bad key
        try:
            await parse_model_request(request, ctx, self.max_body, self.body_timeout)
        except Rejection as rejection:
            if not _names_no_model(ctx, rejection):
                raise
            # A Responses call that names no model (a stored prompt decides it upstream): nothing
            # to route, so it passes through to the default upstream, governed like any passthrough.
            ctx.request_bytes = len(ctx.raw)
            return await self.passthrough_relay.relay(request, ctx, streamed=False)
        if self._authorize:
            await hooks.authorize(ctx)
        if self._short_circuit and ctx.endpoint in _SHORT_CIRCUIT_ENDPOINTS:
            reply = await hooks.short_circuit(ctx)
            if reply is not None:
                return render_reply(ctx, reply)
        ctx.route = await hooks.route(ctx)
        if self._admit:
            await hooks.admit(ctx)
        return await self.attempts.run(request, ctx)


def _names_no_model(ctx: RequestContext, rejection: Rejection) -> bool:
    """Whether parsing refused only a ``/v1/responses`` body's missing ``model`` (the body itself
    is a JSON object, read and kept in ``ctx``)."""
    return (ctx.endpoint == "responses" and rejection.param == "model"
            and rejection.code == "missing_required_parameter" and "model" not in ctx.body and bool(ctx.body))


def _close_open_attempt(ctx: RequestContext) -> None:
    """The attempt the client's departure cut short ends now: its wait is upstream time,
    not the proxy's own (the overhead histogram must not count it)."""
    if ctx.attempts:
        record = ctx.attempts[-1]
        if not record.ended:
            record.ended = time.perf_counter()
            record.error = record.error or "cancelled"
            ctx.timings.upstream += record.duration


def _disconnected(ctx: RequestContext) -> None:
    ctx.client_disconnected = True
    ctx.status = 499  # "client closed request"
    ctx.error = ctx.error or "client_disconnected"


def request_principal(request: web.Request) -> Principal | None:
    """The caller of the admin request being served, if it went through :meth:`Gateway.middleware`."""
    ctx = request.get(REQUEST_CONTEXT)
    return ctx.principal if ctx is not None else None
