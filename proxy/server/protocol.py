"""The HTTP server's own edges: protocol errors in OpenAI's shape, a deadline for headers.

aiohttp answers malformed HTTP (bad request lines, oversized headers, broken
chunking, an undecodable ``Content-Encoding``) before any handler runs, in plain
text, and logs a traceback per occurrence. Floodgate's clients are OpenAI SDKs:
they get OpenAI's JSON error shape here too, and a client's bad input is logged
at debug level without a traceback — only a real server error is an exception.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError

from ..errors import error_body, error_type_for
from ..keys import GENERATIONS

log = logging.getLogger("floodgate.server")

class _JsonErrorHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering protocol errors with OpenAI's error shape."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            text = "internal error in the gateway"
        else:
            log.debug("refused malformed HTTP from %s: %s", getattr(request, "remote", "?"), message or exc)
            detail = exc.message if isinstance(exc, BadHttpMessage) and isinstance(exc.message, str) else message
            # aiohttp's first line names the problem; the lines after it echo the client's bytes.
            text = f"malformed HTTP request: {(detail or 'bad request').strip().splitlines()[0][:120]}"
        if isinstance(exc, ContentEncodingError):
            status, text = 415, "unsupported Content-Encoding (identity, gzip and deflate are accepted)"
        if request.writer.output_size > 0:  # part of a response went out: nothing more can be said
            raise ConnectionError("response already started; cannot send an error")
        response = web.Response(status=status, content_type="application/json",
                                body=error_body(text, type=error_type_for(status), code="invalid_http"))
        response.force_close()
        return response


class GatewayRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections use :class:`_JsonErrorHandler`,
    and hand each request straight to the application's current generation."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GatewayServer  # only __call__ differs: which handler class it builds
        generations = self._app.get(GENERATIONS)
        if generations is not None:
            # The shell's one catch-all route would only lead here: skip its routing (~5 µs a request).
            server.request_handler = generations.handle
        return server


class _GatewayServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class ListenSite(web.SockSite):
    """A listening socket whose new connections must deliver a request's headers in time.

    aiohttp's keep-alive timer bounds idle connections; this adds a shorter
    deadline for the first request of a connection, so a client that connects and
    trickles its headers (or sends nothing) holds a file descriptor for seconds,
    not minutes.
    """

    def __init__(self, runner: web.BaseRunner, sock: Any, *, headers_timeout: float,
                 served: weakref.WeakSet[Any], **kwargs: Any) -> None:
        super().__init__(runner, sock, **kwargs)
        self._headers_timeout = headers_timeout
        self._served = served

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        timeout, served = self._headers_timeout, self._served

        def factory() -> web_protocol.RequestHandler:
            handler = server()
            loop.call_later(timeout, _close_if_silent, weakref.ref(handler), served)
            return handler

        self._server = await loop.create_server(factory, sock=self._sock, ssl=self._ssl_context,
                                                backlog=self._backlog)


def _close_if_silent(ref: weakref.ref[web_protocol.RequestHandler], served: weakref.WeakSet[Any]) -> None:
    handler = ref()
    if handler is None or handler.transport is None or handler.transport in served:
        return
    log.debug("closing a connection that sent no complete request headers in time")
    handler.force_close()
