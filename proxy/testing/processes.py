"""Real processes for end-to-end tests: a gateway (``floodgate serve``) and a private redis-server.

Both run on free loopback ports and are stopped by pid. :class:`RedisServer` is the way to test
what a gateway does when Redis goes away (kill it, pause it) without touching the machine's own
Redis::

    server = RedisServer(tmp_path)
    await server.start()
    ...                       # a gateway with state.url = server.url
    await server.kill()       # Redis is gone: degraded mode
    await server.start()      # back on the same port (empty)

:class:`GatewayProcess` wraps one ``floodgate serve`` (a supervisor and its workers with
``--workers``): its log, its worker pids, readiness, and a bounded stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["GatewayProcess", "GatewayProcesses", "RedisServer", "free_port"]


def free_port() -> int:
    """A TCP port nothing listens on now, on the loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free loopback port, keeping nothing on disk."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Start it (again, on the same port) and wait until it answers."""
        import redis.asyncio

        self.process = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        client = redis.asyncio.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    await client.ping()
                    return
                except (redis.RedisError, OSError):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"redis-server on port {self.port} did not start") from None
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def pause(self) -> None:
        """It stops answering and keeps its data (a partition, a stalled host): SIGSTOP."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    async def kill(self) -> None:
        """Gone, with its data: SIGKILL (after SIGCONT, should it be paused)."""
        if self.process is not None and self.process.returncode is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)
            await asyncio.wait_for(self.process.wait(), 10)

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)


class GatewayProcess:
    """One ``floodgate serve`` process (a supervisor when ``--workers`` > 1)."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path, config: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log
        self.config = config
        self.base = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(cls, config: Path, *args: str, port: int, log: Path, cwd: Path,
                    env: Mapping[str, str] | None = None) -> GatewayProcess:
        """``python -m proxy serve --config CONFIG ARGS`` with its output in ``log`` (not waited for)."""
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", "serve", "--config", str(config), *args, cwd=str(cwd),
                env={**os.environ, **(env or {})}, stdout=out, stderr=asyncio.subprocess.STDOUT)
        return cls(process, port, log, config)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def children(self) -> set[int]:
        """The worker processes' pids (Linux: /proc)."""
        pids: set[int] = set()
        for task in Path(f"/proc/{self.process.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (task / "children").read_text().split())
        return pids

    async def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.returncode is not None:
                raise AssertionError(f"the gateway exited ({self.process.returncode}) before {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/readyz`` answers 200."""
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"the gateway exited ({self.process.returncode}):\n{self.log()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.base}/readyz") as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the gateway never got ready:\n{self.log()}")
                await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 45.0) -> int:
        """SIGTERM, then wait (bounded); what is left, workers included, is killed by pid."""
        children = self.children()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return self.process.returncode or 0


class GatewayProcesses:
    """Starts ``floodgate serve`` processes for a test (``await gateways(config_text, *args)``);
    :meth:`stop_all` stops every one still running (a test's fixtures call it before cleaning
    the Redis keys the gateways write under: a shutdown still sends what is due).

    :param directory: where configs (``config-N.yaml``, or ``config.yaml`` with ``one_config``) and
        logs (``gateway-N.log``) go; the processes' working directory.
    :param env: added to every process's environment (``FLOODGATE_PORT`` is its port).
    """

    def __init__(self, directory: Path, env: Mapping[str, str] | None = None, *, one_config: bool = False) -> None:
        self.directory = directory
        self.env = dict(env or {})
        self.one_config = one_config
        self.started: list[GatewayProcess] = []
        self.count = 0

    async def __call__(self, config_text: str, *args: str, ready: bool = True) -> GatewayProcess:
        port, n = free_port(), self.count
        self.count += 1
        config = self.directory / ("config.yaml" if self.one_config else f"config-{n}.yaml")
        config.write_text(config_text, encoding="utf-8")
        gw = await GatewayProcess.start(config, *args, port=port, log=self.directory / f"gateway-{n}.log",
                                        cwd=self.directory, env={**self.env, "FLOODGATE_PORT": str(port)})
        self.started.append(gw)
        if ready:
            await gw.wait_ready()
        return gw

    async def stop_all(self) -> None:
        while self.started:
            await self.started.pop().stop()
