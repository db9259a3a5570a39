"""Generations: what a configuration builds, swapped whole on a reload.

A :class:`Generation` is one configuration's plugin manager, hooks, gateway,
upstream sessions and routes — an aiohttp application built by
:func:`proxy.app.build_generation`, never run by a server of its own. The
application ``create_app`` returns is a thin shell: one catch-all route whose
handler, :meth:`Generations.handle`, looks up the current generation once per
request and lets it handle the request (its middlewares, routes and plugins'
routes; ``request.app`` is the generation's application).

A reload builds and starts the next generation (upstream sessions open,
``proxy_startup`` runs) beside the current one, then swaps: new requests go to
the new one at once, requests in flight finish on the old one, which is stopped
(``proxy_shutdown``, sessions closed) when its last request is done. What must
survive a reload lives outside generations: :class:`proxy.state.SharedState`, the
metrics registry, the core's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from .config import Config
from .hooks import Hooks
from .metrics import MetricsRegistry
from .state import SharedState
from .upstream import Upstreams

log = logging.getLogger("floodgate")


class Generation:
    """One configuration's application and what it is made of."""

    def __init__(self, number: int, config: Config, app: web.Application, hooks: Hooks, upstreams: Upstreams,
                 registry: CollectorRegistry) -> None:
        self.number = number
        self.config = config
        self.app = app
        self.hooks = hooks
        self.upstreams = upstreams
        self.registry = registry  # where its plugins registered their metrics (staged)
        self.active = 0  # requests it is handling
        self._idle: asyncio.Event | None = None
        self._started = False

    async def start(self) -> None:
        """Open upstream sessions and run ``proxy_startup`` (the application's on_startup)."""
        self.app.freeze()
        self._started = True
        await self.app.startup()

    async def stop(self) -> None:
        """Run ``proxy_shutdown`` and close upstream sessions (on_shutdown, on_cleanup)."""
        if not self._started:
            return
        self._started = False
        await self.app.shutdown()
        await self.app.cleanup()

    async def retire(self) -> None:
        """Wait for the requests it is still handling, then stop."""
        if self.active:
            self._idle = asyncio.Event()
            await self._idle.wait()
        await self.stop()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        try:
            return await self.app._handle(request)
        finally:
            self.active -= 1
            if not self.active and self._idle is not None:
                self._idle.set()


class Generations:
    """The current generation, and the reloads that replace it.

    :param build: builds a generation from a config and its number (raises
        :class:`proxy.ConfigErrors`); the same code as the first one.
    """

    def __init__(self, first: Generation, build: Callable[[Config, int], Generation], registry: MetricsRegistry,
                 state: SharedState) -> None:
        self.current = first
        self._build = build
        self._registry = registry
        self._state = state
        self._retiring: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._closing = False
        registry.commit(first.registry)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The application's only route: the current generation handles the request."""
        return await self.current.handle(request)

    async def start(self) -> None:
        await self.current.start()

    async def reload(self, config: Config) -> Generation:
        """Build and start a generation for ``config``, then serve new requests with it.

        Raises :class:`proxy.ConfigErrors` (or what a plugin's start-up raised): the
        current generation then keeps serving, untouched.
        """
        async with self._lock:
            if self._closing:
                raise RuntimeError("the gateway is shutting down")
            generation = self._build(config, self.current.number + 1)
            try:
                await generation.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await generation.stop()
                raise
            config.seal()  # its plugins have read their settings (client keys among them)
            old, self.current = self.current, generation
            self._registry.commit(generation.registry)
            self._state.apply(config.settings.state)
            task = asyncio.get_running_loop().create_task(old.retire())
            self._retiring.add(task)
            task.add_done_callback(self._retired)
            return generation

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping the previous configuration failed", exc_info=task.exception())

    async def close(self) -> None:
        """Stop every generation (after the server stopped handling requests)."""
        self._closing = True
        async with self._lock:
            if self._retiring:
                await asyncio.gather(*self._retiring, return_exceptions=True)
            await self.current.stop()


def describe(generation: Generation) -> str:
    """``generation 2: 1 upstream(s), 5 model(s), 5 alias(es)``, for logs."""
    config = generation.config
    return (f"generation {generation.number}: {len(config.upstreams)} upstream(s), {len(config.models)} model(s), "
            f"{len(config.aliases)} alias(es)")
