"""``create_app(config)``: one self-contained application per call.

The plugin manager, hooks, upstream sessions and metrics registry are built here
and kept under :class:`aiohttp.web.AppKey`s — no module-level state — so tests
can run many applications side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pluggy
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .config import Config, UpstreamSettings
from .defaults import AccessLog, CoreDefaults
from .dispatch import Hooks
from .errors import ConfigError, ConfigErrors, Rejection, error_response
from .loader import BUILTIN_PLUGINS, PluginInfo, build_plugin_manager
from .metrics import CoreMetrics
from .pipeline import MODEL_ENDPOINTS, Gateway
from .types import ANONYMOUS, Principal, RequestContext
from .upstream import Upstreams

log = logging.getLogger("floodgate")

CONFIG = web.AppKey("floodgate.config", Config)
PLUGIN_MANAGER = web.AppKey("floodgate.plugin_manager", pluggy.PluginManager)
PLUGINS = web.AppKey("floodgate.plugins", list)
HOOKS = web.AppKey("floodgate.hooks", Hooks)
UPSTREAMS = web.AppKey("floodgate.upstreams", Upstreams)
REGISTRY = web.AppKey("floodgate.registry", CollectorRegistry)
GATEWAY = web.AppKey("floodgate.gateway", Gateway)
READY = web.AppKey("floodgate.ready", dict)


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
    _configure(pm, config, registry, errors)

    hooks = Hooks(pm)
    upstreams = Upstreams(config)
    gateway = Gateway(config, hooks, upstreams, metrics)
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[_rejections])
    app[CONFIG] = config
    app[PLUGIN_MANAGER] = pm
    app[PLUGINS] = infos
    app[HOOKS] = hooks
    app[UPSTREAMS] = upstreams
    app[REGISTRY] = registry
    app[GATEWAY] = gateway
    app[READY] = {"ready": False}
    _add_routes(app, gateway)
    pm.hook.proxy_add_routes(app=app)
    app.router.add_route("*", "/v1/{tail:.*}", gateway.passthrough)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    app.on_response_prepare.append(_ensure_request_id)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


def _configure(pm: pluggy.PluginManager, config: Config, registry: CollectorRegistry,
               errors: list[ConfigError]) -> None:
    """Run every ``proxy_configure``; raise all errors (the loader's too) together."""
    errors = list(errors)
    for impl in reversed(pm.hook.proxy_configure.get_hookimpls()):
        kwargs = {"config": config, "registry": registry}
        try:
            impl.function(*[kwargs[a] for a in impl.argnames])
        except ConfigErrors as exc:
            errors.extend(exc.errors)
        except ConfigError as exc:
            errors.append(exc)
    if not pm.hook.proxy_builtin_upstream.get_hookimpls():
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
        names: set[str] = set()
        for result in pm.hook.proxy_route_names(config=config):
            names.update(result or ())
        try:
            config.check_aliases(names)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigErrors([config.locate(e) for e in errors])


def _add_routes(app: web.Application, gateway: Gateway) -> None:
    router = app.router
    for prefix in ("/v1", ""):
        for endpoint in MODEL_ENDPOINTS:
            router.add_route("*", f"{prefix}/{endpoint}", gateway.model_handler(endpoint))
        router.add_route("*", f"{prefix}/models", gateway.models)
        router.add_route("*", f"{prefix}/models/{{model_id}}", gateway.models)
    router.add_get("/healthz", _healthz)
    router.add_get("/readyz", _readyz)
    router.add_get("/metrics", _metrics)
    router.add_get("/-/plugins", _plugins)


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
    hooks = app[HOOKS]

    async def builtin(name: str, settings: UpstreamSettings) -> str | None:
        return await hooks.first_result("proxy_builtin_upstream", name=name, settings=settings)

    await app[UPSTREAMS].start(builtin)
    await app[HOOKS].call_all("proxy_startup", app=app)
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
    await app[HOOKS].observe("proxy_shutdown", app=app)
    await app[UPSTREAMS].close()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    app = request.app
    checks = {"config": True, "started": app[READY]["ready"], "upstreams": app[UPSTREAMS].ready}
    ok = all(checks.values())
    return web.json_response({"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def authenticate(request: web.Request) -> Principal:
    """Run ``proxy_authenticate`` for an endpoint outside the OpenAI surface (``/-/...``).

    Raises :class:`Rejection` as the auth plugins decide. With no auth plugin
    loaded the caller is :data:`ANONYMOUS`, which admin endpoints accept: a
    gateway without authentication is a development setup.
    """
    app = request.app
    ctx = RequestContext(request_id="-", method=request.method, endpoint=request.path.lstrip("/"),
                         headers=request.headers, config=app[CONFIG])
    return await app[HOOKS].first_result("proxy_authenticate", ctx=ctx)


async def require_admin(request: web.Request) -> Principal:
    """:func:`authenticate`, then refuse (403) any caller that is not an admin."""
    principal = await authenticate(request)
    if not (principal.admin or principal is ANONYMOUS):
        raise Rejection(403, "this endpoint needs the admin key", code="admin_required", should_retry=False)
    return principal


async def _plugins(request: web.Request) -> web.Response:
    """Loaded plugins; their modules, versions and hooks for admins (or with no auth plugin)."""
    app = request.app
    try:
        principal = await authenticate(request)
    except Rejection as rejection:
        return error_response(rejection)
    detailed = principal.admin or principal is ANONYMOUS
    infos: list[PluginInfo] = app[PLUGINS]
    data = [
        {"name": i.name, "source": i.source, "module": i.module, "version": i.version, "hooks": list(i.hooks)}
        if detailed else {"name": i.name}
        for i in infos
    ]
    return web.Response(body=orjson.dumps({"plugins": data}), content_type="application/json")


async def _not_found(request: web.Request) -> web.Response:
    return error_response(Rejection(404, f"unknown path {request.path}", code="not_found", should_retry=False))
