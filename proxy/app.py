"""``create_app(config)``: one self-contained application per call.

The application is a shell that outlives configuration reloads: it owns the
:class:`~proxy.state.SharedState`, the metrics registry and the core's metrics,
and hands every request to its current :class:`~proxy.generation.Generation` —
the plugin manager, hooks, gateway, upstream sessions and routes one config
builds (:func:`build_generation`, the same code for the first config and every
reload). Everything lives under :class:`aiohttp.web.AppKey`\\ s — no
module-level state — so tests can run many applications side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy
from aiohttp import web
from prometheus_client import CollectorRegistry

from .admin import add_admin_routes
from .config import Config
from .defaults import AccessLog, CoreDefaults
from .errors import ConfigError, ConfigErrors
from .generation import Generation, Generations
from .hooks import Hooks
from .hookspecs import proxy_builtin_upstream
from .keys import (
    CONFIG,
    GATEWAY,
    GENERATIONS,
    HOOKS,
    PLUGIN_MANAGER,
    PLUGINS,
    READY,
    REGISTRY,
    SERVED,
    STATE,
    UPSTREAMS,
)
from .loader import BUILTIN_PLUGINS, build_plugin_manager
from .metrics import CoreMetrics, MetricsRegistry
from .request import MODEL_ENDPOINTS, Gateway
from .state import SharedState
from .upstream import Upstreams

log = logging.getLogger("floodgate")

__all__ = ["CONFIG", "GATEWAY", "GENERATIONS", "HOOKS", "PLUGINS", "PLUGIN_MANAGER", "READY", "REGISTRY", "STATE",
           "UPSTREAMS", "build_generation", "create_app"]

#: Keys a generation's application has that the shell copies from its first generation.
_FIRST_GENERATION_KEYS = (CONFIG, PLUGIN_MANAGER, PLUGINS, HOOKS, UPSTREAMS, GATEWAY)


@dataclass(frozen=True)
class AppParts:
    """What every generation of one application shares, and how its plugins are found."""

    state: SharedState
    registry: MetricsRegistry
    metrics: CoreMetrics
    ready: dict[str, Any]
    served: weakref.WeakSet[Any]
    plugins: Sequence[Any]
    builtins: tuple[str, ...]
    entry_points: bool


def create_app(
    config: Config,
    *,
    plugins: Sequence[Any] = (),
    builtins: Iterable[str] = BUILTIN_PLUGINS,
    entry_points: bool = True,
    state: SharedState | None = None,
) -> web.Application:
    """Build the application for ``config``. Raises :class:`ConfigErrors` on any bad setting.

    :param plugins: extra plugin objects to register (after all others; the same
        objects in every generation a reload builds).
    :param builtins: the built-in plugin references to load (all by default).
    :param entry_points: whether to load plugins from the ``floodgate`` entry-point group.
    :param state: the shared state (default: one made from the ``state`` section for
        ``server.workers`` processes).

    The returned application's ``CONFIG``, ``HOOKS``, ``PLUGINS``, ``PLUGIN_MANAGER``,
    ``UPSTREAMS`` and ``GATEWAY`` are its first generation's; after a reload the live
    ones are ``app[GENERATIONS].current.app[...]`` (handlers and plugins always see
    their own generation's application as ``request.app`` / the hook's ``app``).
    """
    if state is None:
        state = SharedState(config.settings.state, workers=config.server.worker_count)
    registry = MetricsRegistry()
    metrics = CoreMetrics(registry)
    state.bind_metrics(registry)
    parts = AppParts(state=state, registry=registry, metrics=metrics, ready={"ready": False},
                     served=weakref.WeakSet(), plugins=tuple(plugins), builtins=tuple(builtins),
                     entry_points=entry_points)
    first = build_generation(config, parts, 1)
    generations = Generations(first, lambda c, n: build_generation(c, parts, n), registry, state)
    app = web.Application(client_max_size=config.server.max_body_bytes)
    for key in _FIRST_GENERATION_KEYS:
        app[key] = first.app[key]
    app[STATE] = state
    app[REGISTRY] = registry
    app[READY] = parts.ready
    app[SERVED] = parts.served
    app[GENERATIONS] = generations
    # The generation's own router answers Expect: 100-continue (after its auth check).
    app.router.add_route("*", "/{tail:.*}", generations.handle, expect_handler=_defer_expect)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


def build_generation(config: Config, parts: AppParts, number: int) -> Generation:
    """The application one config makes: plugins configured, routes added, not started.

    Raises :class:`ConfigErrors` with every error of the pass (core, loader, plugins).
    """
    registry = parts.registry.stage()
    core: list[Any] = [CoreDefaults(), parts.metrics]
    if config.server.access_log:
        core.append(AccessLog(worker=parts.state.worker))
    pm, infos, errors = build_plugin_manager(core=core, builtins=parts.builtins, entry_points=parts.entry_points,
                                             modules=config.plugin_modules, extra=parts.plugins,
                                             disabled=config.disabled_plugins)
    hooks = Hooks(pm)
    _configure(pm, hooks, config, registry, parts.state, errors)

    upstreams = Upstreams(config)
    gateway = Gateway(config, hooks, upstreams, parts.metrics)
    app = web.Application(client_max_size=config.server.max_body_bytes,
                          middlewares=[gateway.middleware])
    app[CONFIG] = config
    app[PLUGIN_MANAGER] = pm
    app[PLUGINS] = infos
    app[HOOKS] = hooks
    app[UPSTREAMS] = upstreams
    app[REGISTRY] = parts.registry
    app[GATEWAY] = gateway
    app[READY] = parts.ready
    app[SERVED] = parts.served
    app[STATE] = parts.state
    _add_routes(app, gateway)
    add_admin_routes(app)
    hooks.add_routes(app)
    app.on_response_prepare.append(_ensure_request_id)
    app.on_startup.append(_start_generation)
    app.on_cleanup.append(_stop_generation)
    return Generation(number, config, app, hooks, upstreams, registry)


def _configure(pm: pluggy.PluginManager, hooks: Hooks, config: Config, registry: CollectorRegistry,
               state: SharedState, errors: list[ConfigError]) -> None:
    """Run every ``proxy_configure``; raise all errors (the loader's too) together."""
    errors = [*errors, *hooks.configure(config, registry, state)]
    if state.workers > 1 and config.settings.state.backend == "memory":
        message = (f"{state.workers} worker processes need shared state: set state.backend: redis (and "
                   "state.url); memory state is per process, so each worker would enforce every limit, budget "
                   "and breaker on its own")
        errors.append(config.error(("state", "backend"), message))
    if not hooks.implemented(proxy_builtin_upstream):
        errors.extend(config.error(("upstreams", name, "base_url"), f"no loaded plugin serves {u.base_url!r} "
                                   "(the mock upstream is the 'mock' plugin, installed with floodgate)")
                      for name, u in config.upstreams.items() if u.is_builtin)
    disabled = set(config.disabled_plugins)
    for name in config.unclaimed_plugin_blocks():
        if name in disabled:
            log.warning("plugins.%s: settings of a disabled plugin are not used", name)
        else:
            errors.append(config.error(("plugins", name), "no loaded plugin reads this block "
                                       "(misspelled, or its plugin is not installed?)"))
    if not errors:
        try:
            config.check_aliases(hooks.route_names(config))
        except ConfigErrors as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigErrors([config.locate(e) for e in errors])


def _add_routes(app: web.Application, gateway: Gateway) -> None:
    """The gateway owns ``POST`` on the model endpoints and ``GET`` on ``/models[/{id}]``, with or
    without ``/v1``; every other method and path passes through (``/-/`` excepted).

    aiohttp tries the most specific path first whatever the registration order, so the
    catch-alls only get what nothing else (admin endpoints, plugins' routes) serves; a path
    the gateway owns with another method falls through to them too.
    """
    router = app.router
    for prefix in ("/v1", ""):
        for endpoint in MODEL_ENDPOINTS:
            router.add_post(f"{prefix}/{endpoint}", gateway.model_handler(endpoint))
        router.add_get(f"{prefix}/models", gateway.models)
        router.add_get(f"{prefix}/models/{{model_id}}", gateway.models)
    router.add_route("*", "/v1/{tail:.*}", gateway.passthrough)
    router.add_route("*", "/{tail:.*}", gateway.passthrough)


async def _ensure_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response carries ``x-request-id`` (the gateway's own set it already)."""
    if "x-request-id" not in response.headers:
        response.headers["x-request-id"] = uuid.uuid4().hex


async def _defer_expect(request: web.Request) -> None:
    return None


async def _startup(app: web.Application) -> None:
    await app[STATE].start()  # the Redis pool is open before any plugin starts
    try:
        await app[GENERATIONS].start()
    except BaseException:
        # aiohttp runs no on_cleanup for an application that failed to start: close what opened.
        with contextlib.suppress(Exception):
            await app[GENERATIONS].close()
        await app[STATE].close()
        raise
    app[READY]["lag_watch"] = asyncio.create_task(app[GENERATIONS].current.app[GATEWAY].metrics.watch_loop_lag())
    app[READY]["ready"] = True


async def _shutdown(app: web.Application) -> None:
    app[READY]["ready"] = False  # load balancers stop sending; in-flight requests finish


async def _cleanup(app: web.Application) -> None:
    watch = app[READY].pop("lag_watch", None)
    if watch is not None:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    try:
        await app[GENERATIONS].close()
    finally:
        await app[STATE].close()


async def _start_generation(app: web.Application) -> None:
    await app[UPSTREAMS].start(app[HOOKS].builtin_upstream)
    await app[HOOKS].startup(app)


async def _stop_generation(app: web.Application) -> None:
    await app[HOOKS].shutdown(app)
    await app[UPSTREAMS].close()
