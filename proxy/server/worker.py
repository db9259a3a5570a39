"""A worker process of ``floodgate serve --workers N`` (started by the supervisor, never by hand).

It inherits the listening socket and one end of its control channel, takes its
configuration (text the supervisor validated) from the channel, serves until
SIGTERM/SIGINT — or until the supervisor is gone — and reloads when the
supervisor sends a new configuration. Metric values go to the supervisor's
multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, set in its environment
before anything imports prometheus-client), so ``/metrics`` shows the host.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence

from ..app import create_app
from ..config import parse_config
from ..errors import ConfigErrors
from ..state import SharedState
from . import loops
from .control import EXIT_CONFIG, Channel
from .logs import access_log_off_loop, configure_logging
from .reload import Reloader
from .run import raise_open_file_limit, run_app

log = logging.getLogger("floodgate.server")

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="floodgate-worker", description=__doc__)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the supervisor, with validated text
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s [worker {args.index}]: "
                                                   "%(message)s")
    raise_open_file_limit()
    sock = socket.socket(fileno=args.listen_fd)
    sock.setblocking(False)
    control = socket.socket(fileno=args.control_fd)
    with access_log_off_loop():
        return loops.run(_serve(args.index, args.workers, sock, control), args.event_loop)


async def _serve(index: int, workers: int, sock: socket.socket, control: socket.socket) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # told to stop while starting: start, then drain at once
        loop.add_signal_handler(sig, stop.set)
    channel = await Channel.open(control)
    first = await channel.receive()
    if first is None or first.get("op") != "config":
        return 1  # the supervisor went away before sending anything
    try:
        config = parse_config(first["text"], source=first["source"])
        configure_logging(config.server.log_level)
        app = create_app(config, state=SharedState(config.settings.state, workers=workers, worker=index))
    except ConfigErrors as exc:
        for error in exc.errors:
            log.error(str(error))  # formatted: each is a distinct line for the repeat filter
        return EXIT_CONFIG
    config.seal()
    reloader = Reloader(app, None)  # the supervisor validated and warned already
    tasks: list[asyncio.Task[None]] = []

    async def listen() -> None:
        while (message := await channel.receive()) is not None:
            if message.get("op") == "config":
                ok = await reloader.reload_text(message["text"], message["source"])
                await channel.send({"op": "reloaded", "version": message.get("version"), "ok": ok})
        if not stop.is_set():
            log.warning("the supervisor is gone: draining and exiting")
            stop.set()

    async def started() -> None:
        await channel.send({"op": "ready"})
        tasks.append(asyncio.create_task(listen()))

    try:
        await run_app(app, config, sock, stop, started=started, announce=False)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
