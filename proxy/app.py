"""``create_app(config)``: one self-contained application per call.

The plugin manager, hooks, upstream sessions and metrics registry are built here
and kept under :class:`aiohttp.web.AppKey`\\ s — no module-level state — so tests
can run many applications side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pluggy
from aiohttp import web
from prometheus_client import CollectorRegistry

from .admin import add_admin_routes
from .config import Config
from .defaults import AccessLog, CoreDefaults
from .errors import ConfigError, ConfigErrors, Rejection, error_response
from .hooks import Hooks
from .hookspecs import proxy_builtin_upstream
from .keys import CONFIG, GATEWAY, HOOKS, PLUGIN_MANAGER, PLUGINS, READY, REGISTRY, UPSTREAMS
from .loader import BUILTIN_PLUGINS, build_plugin_manager
from .metrics import CoreMetrics
from .request import MODEL_ENDPOINTS, Gateway
from .upstream import Upstreams

log = logging.getLogger("floodgate")

__all__ = ["CONFIG", "GATEWAY", "HOOKS", "PLUGINS", "PLUGIN_MANAGER", "READY", "REGISTRY", "UPSTREAMS",
           "create_app"]


def create_app(
    config: Config,
    *,
    plugins: Sequence[Any] = (),
    builtins: Iterable[str] = BUILTIN_PLUGINS,
    entry_points: bool = True,
) -> web.Application:
    """Build the application for ``config``. Raises :class:`ConfigErrors` on any bad setting.

    :param plugins: extra plugin objects to register (after all others).
    :param builtins: the built-in plugin references to load (all by default).
    :param entry_points: whether to load plugins from the ``floodgate`` entry-point group.
    """
    registry = CollectorRegistry()
    metrics = CoreMetrics(registry)
    core: list[Any] = [CoreDefaults(), metrics]
    if config.server.access_log:
        core.append(AccessLog())
    pm, infos, errors = build_plugin_manager(core=core, builtins=builtins, entry_points=entry_points,
                                             modules=config.plugin_modules, extra=plugins,
                                             disabled=config.disabled_plugins)
    hooks = Hooks(pm)
    _configure(pm, hooks, config, registry, errors)

    upstreams = Upstreams(config)
    gateway = Gateway(config, hooks, upstreams, metrics)
    app = web.Application(client_max_size=config.server.max_body_bytes,
                          middlewares=[_rejections, gateway.path_middleware, gateway.admin_middleware])
    app[CONFIG] = config
    app[PLUGIN_MANAGER] = pm
    app[PLUGINS] = infos
    app[HOOKS] = hooks
    app[UPSTREAMS] = upstreams
    app[REGISTRY] = registry
    app[GATEWAY] = gateway
    app[READY] = {"ready": False}
    _add_routes(app, gateway)
    add_admin_routes(app)
    hooks.add_routes(app)
    app.router.add_route("*", "/v1/{tail:.*}", gateway.passthrough)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    app.on_response_prepare.append(_ensure_request_id)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


def _configure(pm: pluggy.PluginManager, hooks: Hooks, config: Config, registry: CollectorRegistry,
               errors: list[ConfigError]) -> None:
    """Run every ``proxy_configure``; raise all errors (the loader's too) together."""
    errors = [*errors, *hooks.configure(config, registry)]
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


@web.middleware
async def _rejections(request: web.Request, handler: Any) -> web.StreamResponse:
    """A :class:`Rejection` raised by any handler — a plugin's endpoint included — is
    answered with OpenAI's JSON error shape, never aiohttp's plain-text 500."""
    try:
        return await handler(request)
    except Rejection as rejection:
        return error_response(rejection)


async def _ensure_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response carries ``x-request-id`` (the gateway's own set it already)."""
    if "x-request-id" not in response.headers:
        response.headers["x-request-id"] = uuid.uuid4().hex


async def _startup(app: web.Application) -> None:
    await app[UPSTREAMS].start(app[HOOKS].builtin_upstream)
    await app[HOOKS].startup(app)
    app[READY]["lag_watch"] = asyncio.create_task(app[GATEWAY].metrics.watch_loop_lag())
    app[READY]["ready"] = True


async def _shutdown(app: web.Application) -> None:
    app[READY]["ready"] = False  # load balancers stop sending; in-flight requests finish


async def _cleanup(app: web.Application) -> None:
    watch = app[READY].pop("lag_watch", None)
    if watch is not None:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    await app[HOOKS].shutdown(app)
    await app[UPSTREAMS].close()


async def _not_found(request: web.Request) -> web.Response:
    return error_response(Rejection(404, f"unknown path {request.path}", code="not_found", should_retry=False))
