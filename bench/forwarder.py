"""The floor: a bare aiohttp forwarder that does nothing but relay.

It reads the request body, sends it over one pooled :class:`aiohttp.ClientSession`
to the upstream (same method, path and query), and returns the upstream's status,
``Content-Type`` and bytes. Event streams (``text/event-stream``) are relayed
chunk by chunk as the network delivers them, never buffered. No parsing, no
hooks, no metrics, no header policy: whatever Floodgate costs on top of this is
the price of its features.

Run it as a process (what ``bench/run.py`` does)::

    python bench/forwarder.py --upstream http://127.0.0.1:9000 --port 8090

It imports nothing but aiohttp (and uvloop with ``--loop uvloop``), so it is the
same floor whatever state the project is in. The benchmark runs it on the event loop
``floodgate serve`` uses, so the ratio compares the gateway's work, not two loops.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

SESSION = web.AppKey("bench_forwarder_session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("bench_forwarder_upstream", str)

_STREAM_TYPE = "text/event-stream"


def create_forwarder_app(upstream: str, *, pool_size: int = 200) -> web.Application:
    """The forwarder app relaying every path to ``upstream`` (an origin like ``http://127.0.0.1:9000``).

    :param pool_size: keep-alive connections to the upstream (Floodgate's ``pool_size`` in the bench configs).
    """
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")

    async def start(app: web.Application) -> None:
        # Same connector shape as Floodgate's upstream pool; no timeouts (the floor does nothing).
        connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size)
        app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             skip_auto_headers=("User-Agent",),
                                             timeout=aiohttp.ClientTimeout(total=None))

    async def stop(app: web.Application) -> None:
        await app[SESSION].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


async def _forward(request: web.Request) -> web.StreamResponse:
    app = request.app
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")} if body else {}
    async with app[SESSION].request(request.method, app[UPSTREAM] + request.path_qs, data=body or None,
                                    headers=headers, allow_redirects=False) as upstream:
        content_type = upstream.headers.get("Content-Type", "application/octet-stream")
        if content_type.startswith(_STREAM_TYPE):
            response = web.StreamResponse(status=upstream.status,
                                          headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
            await response.prepare(request)
            async for data in upstream.content.iter_any():  # each network read, as it arrives
                await response.write(data)
            await response.write_eof()
            return response
        data = await upstream.read()
        return web.Response(status=upstream.status, body=data, headers={"Content-Type": content_type})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bare aiohttp forwarder (the benchmark's floor).")
    parser.add_argument("--upstream", required=True, help="upstream origin, e.g. http://127.0.0.1:9000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--pool-size", type=int, default=200)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop (the benchmark passes the one Floodgate runs on)")
    args = parser.parse_args(argv)
    loop = None
    if args.loop == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    app = create_forwarder_app(args.upstream, pool_size=args.pool_size)
    print(f"bench forwarder: http://{args.host}:{args.port} -> {args.upstream}", flush=True)
    # SIGTERM/SIGINT stop it cleanly (run_app handles both); no access log: the floor logs nothing.
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=1.0,
                loop=loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
