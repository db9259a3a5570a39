""":class:`SharedState`: where state that must see all traffic lives, one per application.

It outlives configuration reloads. With ``state.backend: redis`` it owns the
redis-py asyncio client (a bounded connection pool, opened when the application
starts, closed when it stops) and the :class:`~.pipe.Pipe` the stores' scripts
run on (one pipelined connection, opened by the first call); with ``memory`` there
is no client and the stores keep their state in this process. Either way stores
keep their in-process objects (buckets, breakers, the local fallback) with
:meth:`SharedState.keep`, so a reload finds them again by name.

Degraded mode: a store that cannot reach Redis reports :meth:`SharedState.failed`
(and so does the health check that runs every ``state.check_interval`` seconds,
so an outage is noticed without traffic too). The first failure switches the
application to degraded mode — the ``floodgate_state_degraded`` gauge is 1,
``/readyz`` says so, one warning is logged — and the check turns into a probe
with backoff that brings it back by itself when Redis answers again (one info
line). While degraded, :attr:`SharedState.shared` is false: stores
go straight to their local share (``on_error: local``) or refuse with 503
(``on_error: reject``, :meth:`SharedState.fallback` raises it) without waiting on
Redis per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..config.schema import StateSettings
from ..errors import Rejection, shorten
from .pipe import Pipe

__all__ = ["STATE_ERRORS", "SharedState"]

log = logging.getLogger("floodgate.state")

T = TypeVar("T")

#: What a store catches around a Redis call and reports with :meth:`SharedState.failed`
#: (redis-py's errors, and the socket errors and timeouts underneath them).
STATE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)

_PROBE_FIRST = 0.1  # seconds between the first probes of an unavailable Redis; then doubling
_PROBE_TTL_MS = 10_000


class SharedState:
    """The application's shared state: Redis client, key names, kept objects, degraded mode.

    :param settings: the ``state`` section (defaults: memory).
    :param workers: worker processes on this host (``limit ÷ workers`` is a worker's local share).
    :param worker: this process's number, from 1.
    """

    errors = STATE_ERRORS

    def __init__(self, settings: StateSettings | None = None, *, workers: int = 1, worker: int = 1) -> None:
        self.settings = settings = settings if settings is not None else StateSettings()
        self.backend = settings.backend
        self.workers = workers
        self.worker = worker
        #: Unique to this process in the whole fleet (host, pid, random): the owner of a lease.
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.on_error = settings.on_error
        self._prefix = settings.key_prefix
        self._share = 1.0 / (workers * settings.hosts)
        self._kept: dict[str, Any] = {}
        # Made now (it connects lazily) so stores built in proxy_configure can hold it; opened by start().
        self._client: Redis | None = None
        self._pipe: Pipe | None = None
        if settings.backend == "redis":
            self._client = _client(settings, worker)
            assert settings.url is not None
            self._pipe = Pipe(settings.url.get_secret_value(), connect_timeout=settings.timeouts.connect,
                              command_timeout=settings.timeouts.command, name=f"floodgate-{worker}-pipe")
        self._started = False
        self._degraded = False
        self._degraded_since = 0.0
        self._watch: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._probe_delay = _PROBE_FIRST
        self._metrics: list[tuple[Gauge, Counter]] = []

    # -- for stores ---------------------------------------------------------------
    @property
    def shared(self) -> bool:
        """Whether stores should use Redis now (backend ``redis``, started, not degraded)."""
        return self._started and not self._degraded

    @property
    def redis(self) -> Redis:
        """The redis-py asyncio client (``decode_responses`` off: replies are bytes). It exists
        from construction — stores may keep it — and connects when the application starts."""
        if self._client is None:
            raise RuntimeError("no Redis client: state.backend is memory")
        return self._client

    @property
    def pipe(self) -> Pipe:
        """The auto-pipelined connection for the stores' script calls on the hot path (see
        :mod:`.pipe`): what every plugin asks during one turn of the event loop goes out in one
        write, so a request's admission is one round trip. Other calls use :attr:`redis`."""
        if self._pipe is None:
            raise RuntimeError("no Redis pipe: state.backend is memory")
        return self._pipe

    @property
    def degraded(self) -> bool:
        return self._degraded

    def key(self, *parts: str | int) -> str:
        """A namespaced Redis key: ``<key_prefix>:part:part``."""
        if not parts:
            raise ValueError("a key needs at least one part")
        return ":".join((self._prefix, *map(str, parts)))

    def keep(self, name: str, factory: Callable[[], T]) -> T:
        """The object kept under ``name``, made by ``factory()`` the first time.

        What is kept survives configuration reloads: a plugin's next generation
        gets the same in-memory buckets or breakers back. Name it after the plugin
        (``"ratelimit.buckets"``).
        """
        if name not in self._kept:
            self._kept[name] = factory()
        kept: T = self._kept[name]
        return kept

    def local_share(self, limit: float) -> float:
        """This worker's share of a fleet-wide limit: ``limit ÷ (hosts × workers)``."""
        return limit * self._share

    def failed(self, exc: BaseException) -> None:
        """A Redis call failed: enter degraded mode (once) and probe until Redis answers."""
        for _, failures in self._metrics:
            failures.inc()
        if self._degraded:
            return
        self._degraded = True
        self._degraded_since = time.monotonic()
        self._probe_delay = _PROBE_FIRST
        self._set_gauges(1)
        then = ("each worker enforces its local share of every limit" if self.on_error == "local"
                else "requests that need it are refused with 503")
        log.warning("shared state: Redis at %s is unavailable (%s: %s); %s until it answers again",
                    self.where, type(exc).__name__, shorten(str(exc), 160), then)
        self._wake.set()  # probe now, not at the next health check

    def succeeded(self) -> None:
        """A Redis call worked (cheap when not degraded)."""
        if self._degraded:
            self._recovered()

    def unavailable(self) -> Rejection:
        """The 503 for a request that needs shared state while it is unavailable."""
        retry_after = max(1, math.ceil(self._probe_delay))
        return Rejection(503, "the gateway's shared state is unavailable; retry shortly", type="server_error",
                         code="state_unavailable", headers={"retry-after": str(retry_after)})

    def fallback(self) -> None:
        """Call before serving from local state: raises :meth:`unavailable` when degraded
        under ``on_error: reject``; returns otherwise (and always with the memory backend)."""
        if self._degraded and self.on_error == "reject":
            raise self.unavailable()

    # -- for the core -------------------------------------------------------------
    @property
    def where(self) -> str:
        """Where the state lives, for logs: host, port and database — never credentials."""
        if self.backend == "memory" or self.settings.url is None:
            return "memory"
        url = urlsplit(self.settings.url.get_secret_value())
        if url.scheme == "unix":
            return f"unix:{url.path}"
        try:
            port = url.port or 6379
        except ValueError:
            port = 6379
        return f"{url.hostname or 'localhost'}:{port}{url.path or '/0'}"

    def status(self) -> dict[str, Any]:
        """The state's part of ``/readyz``."""
        status: dict[str, Any] = {"backend": self.backend, "degraded": self._degraded}
        if self._degraded:
            status["on_error"] = self.on_error
            status["degraded_for_s"] = round(time.monotonic() - self._degraded_since, 1)
        return status

    @property
    def ready(self) -> bool:
        """Whether the gateway can serve as configured (not when degraded under ``reject``)."""
        return not (self._degraded and self.on_error == "reject")

    def bind_metrics(self, registry: CollectorRegistry) -> None:
        """Create the state's metrics in an application's registry."""
        degraded = Gauge("floodgate_state_degraded", "1 while shared state (Redis) is unreachable and the "
                         "gateway runs degraded (state.on_error)", registry=registry, multiprocess_mode="livemax")
        failures = Counter("floodgate_state_failures", "Shared-state (Redis) calls that failed",
                           registry=registry)
        degraded.set(1 if self._degraded else 0)
        self._metrics.append((degraded, failures))

    def apply(self, settings: StateSettings) -> None:
        """Take the settings a reload may change (``on_error``); the rest needs a restart."""
        self.on_error = settings.on_error

    async def start(self) -> None:
        """Open the connection pool (before any plugin starts). Unreachable: start degraded."""
        if self._client is None or self._started:
            return
        self._started = True
        try:
            await self._client.ping()
            if self._pipe is not None:
                await self._pipe.connect()  # and load the stores' scripts: the first requests wait for neither
        except STATE_ERRORS as exc:
            self.failed(exc)
        else:
            log.info("shared state: Redis at %s, keys under %s:", self.where, self._prefix)
        self._watch = asyncio.get_running_loop().create_task(self._check(self._client))

    async def close(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if self._client is not None and self._started:
            self._started = False
            await self._client.aclose(close_connection_pool=True)
        if self._pipe is not None:
            await self._pipe.close()

    # -- degraded mode --------------------------------------------------------------
    async def _check(self, client: Redis) -> None:
        """Health checks while Redis answers; probes with backoff while it does not."""
        while True:
            delay = self._probe_delay if self._degraded else self.settings.check_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                # A write, not a PING: a read-only replica or a full Redis cannot serve the stores either.
                await client.set(self.key("probe"), str(self.worker), px=_PROBE_TTL_MS)
            except STATE_ERRORS as exc:
                if self._degraded:
                    self._probe_delay = min(self._probe_delay * 2, self.settings.check_interval)
                else:
                    self.failed(exc)
                continue
            if self._degraded:
                self._recovered()

    def _recovered(self) -> None:
        self._degraded = False
        self._set_gauges(0)
        log.info("shared state: Redis at %s answers again after %.1fs; limits are shared again",
                 self.where, time.monotonic() - self._degraded_since)

    def _set_gauges(self, value: int) -> None:
        for degraded, _ in self._metrics:
            degraded.set(value)


def _client(settings: StateSettings, worker: int) -> Redis:
    """A client on a bounded pool: a request waits for a free connection up to the command
    timeout. One immediate retry on a broken connection (a pooled one Redis closed), none on
    timeouts: a script that may have run must not run twice."""
    assert settings.url is not None
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    pool = BlockingConnectionPool.from_url(
        settings.url.get_secret_value(), max_connections=settings.pool_size, timeout=settings.timeouts.command,
        socket_connect_timeout=settings.timeouts.connect, socket_timeout=settings.timeouts.command, retry=retry,
        client_name=f"floodgate-{worker}")
    return Redis(connection_pool=pool, retry=retry)
