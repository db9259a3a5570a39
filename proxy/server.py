"""Running the gateway as a server process, with graceful shutdown."""

from __future__ import annotations

import logging

from aiohttp import web

from .app import UPSTREAMS, create_app
from .config import Config


def serve(config: Config, *, host: str | None = None, port: int | None = None) -> int:
    """Serve until SIGINT/SIGTERM; then stop accepting, finish in-flight requests
    (up to ``server.shutdown_timeout``), flush plugins and close upstream sessions."""
    level = getattr(logging, config.server.log_level.upper())
    logging.getLogger().setLevel(level)
    logging.getLogger("floodgate").setLevel(level)
    app = create_app(config)
    host = host or config.server.host
    port = config.server.port if port is None else port

    async def announce(app: web.Application) -> None:
        for mock in app[UPSTREAMS].mocks:
            print(f"floodgate: built-in mock upstream at {mock.url}", flush=True)
        print(f"floodgate: listening on http://{host}:{port}/v1  (Ctrl-C or SIGTERM to stop)", flush=True)

    app.on_startup.append(announce)
    web.run_app(app, host=host, port=port, shutdown_timeout=config.server.shutdown_timeout,
                handler_cancellation=True, access_log=None, print=None)
    return 0
