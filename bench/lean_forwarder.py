"""A measurement, not a product: the floor's forwarder with a lean upstream client.

The same aiohttp server as ``bench/forwarder.py``, but each upstream call goes over
a keep-alive pool of raw asyncio connections whose responses ``httptools`` parses
(Content-Length or chunked bodies; a connection the upstream closes, or one that
answered with ``Connection: close``, is dropped), instead of ``aiohttp.ClientSession``.
It answers one question of issue 13 — how much of a request's CPU is aiohttp's
client — by comparison with the forwarder in the same run::

    python bench/lean_forwarder.py --upstream http://127.0.0.1:9000 --port 8091

Not handled (the reasons it is not a drop-in client): TLS, proxies, redirects,
timeouts, 1xx responses, pipelining, streaming relay (an SSE answer is read whole).
Needs ``pip install httptools``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import urlsplit

import httptools
from aiohttp import web

POOL = web.AppKey("bench_lean_pool", "Pool")


class _Conn(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends one request and waits for its whole answer."""

    def __init__(self) -> None:
        self.transport: Any = None  # asyncio's or uvloop's TCP transport
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, str, bytes]] | None = None
        self.body: list[bytes] = []
        self.content_type = "application/octet-stream"
        self._header: bytes = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self.content_type, b"".join(self.body)))

    async def request(self, head: bytes, body: bytes) -> tuple[int, str, bytes]:
        assert self.transport is not None
        self.body = []
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        return await self.waiter


class Pool:
    """Idle keep-alive connections to one origin (LIFO)."""

    def __init__(self, origin: str) -> None:
        parts = urlsplit(origin)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.idle: list[_Conn] = []

    async def request(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
        conn = self.idle.pop() if self.idle else None
        if conn is None or conn.closed:
            _, conn = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        try:
            answer = await conn.request(head, body)
        except BaseException:
            assert conn.transport is not None
            conn.transport.close()
            raise
        if not conn.closed:
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        return answer

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def start(app: web.Application) -> None:
        app[POOL] = Pool(upstream)

    async def stop(app: web.Application) -> None:
        app[POOL].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


async def _forward(request: web.Request) -> web.Response:
    body = await request.read()
    status, content_type, data = await request.app[POOL].request(
        request.method, request.path_qs, body, request.headers.get("Content-Type", "application/json"))
    return web.Response(status=status, body=data, headers={"Content-Type": content_type})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The floor with a lean httptools upstream client (a measurement).")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    loop = None
    if args.loop == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    web.run_app(create_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None,
                shutdown_timeout=1.0, loop=loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
