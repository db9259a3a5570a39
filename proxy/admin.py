"""The core's operational endpoints and the admin check plugins' endpoints use.

``/healthz`` (liveness), ``/readyz`` (config loaded, upstream sessions open, not
shutting down, shared state usable), ``/metrics`` (Prometheus; the whole host's with
worker processes), ``/-/plugins`` (what is loaded), ``/-/status`` (admin: the live
status every plugin contributes to). Every
``/-/`` endpoint runs the normal request path (see ``Gateway.middleware``):
authenticated first, logged and counted after.
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .errors import Rejection
from .keys import CONFIG, HOOKS, PLUGINS, READY, REGISTRY, STATE, UPSTREAMS
from .loader import PluginInfo
from .metrics import exposition
from .request import request_principal
from .types import ANONYMOUS, EndpointKind, Principal, RequestContext


def add_admin_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/healthz", _healthz)
    router.add_get("/readyz", _readyz)
    router.add_get("/metrics", _metrics)
    router.add_get("/-/plugins", _plugins)
    router.add_get("/-/status", _status)


async def authenticate(request: web.Request) -> Principal:
    """The caller of an endpoint outside the OpenAI surface.

    For ``/-/`` endpoints it was authenticated before the handler ran; elsewhere
    ``proxy_authenticate`` runs now. Raises :class:`Rejection` as the auth plugins
    decide. With no auth plugin loaded the caller is :data:`ANONYMOUS`, which admin
    endpoints accept: a gateway without authentication is a development setup.
    """
    principal = request_principal(request)
    if principal is not None:
        return principal
    app = request.app
    ctx = RequestContext(request_id="-", method=request.method, endpoint=request.path.lstrip("/"),
                         headers=request.headers, config=app[CONFIG], kind=EndpointKind.ADMIN)
    return await app[HOOKS].authenticate(ctx)


async def require_admin(request: web.Request) -> Principal:
    """:func:`authenticate`, then refuse (403) any caller that is not an admin."""
    principal = await authenticate(request)
    if not (principal.admin or principal is ANONYMOUS):
        raise Rejection(403, "this endpoint needs the admin key", code="admin_required", should_retry=False)
    return principal


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """200 when the gateway serves as configured. Shared state degraded: 200 ``"degraded"``
    under ``state.on_error: local`` (limits are enforced locally), 503 under ``reject``."""
    app = request.app
    state = app[STATE]
    checks = {"config": True, "started": app[READY]["ready"], "upstreams": app[UPSTREAMS].ready,
              "state": state.ready}
    ok = all(checks.values())
    status = ("degraded" if state.degraded else "ready") if ok else "not ready"
    body = {"status": status, "checks": checks, "state": state.status()}
    return web.json_response(body, status=200 if ok else 503)


async def _metrics(request: web.Request) -> web.Response:
    body = exposition(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _plugins(request: web.Request) -> web.Response:
    """Loaded plugins; their modules, versions and hooks for admins (or with no auth plugin)."""
    principal = await authenticate(request)
    detailed = principal.admin or principal is ANONYMOUS
    infos: list[PluginInfo] = request.app[PLUGINS]
    data = [
        {"name": i.name, "source": i.source, "module": i.module, "version": i.version, "hooks": list(i.hooks)}
        if detailed else {"name": i.name}
        for i in infos
    ]
    return web.Response(body=orjson.dumps({"plugins": data}), content_type="application/json")


async def _status(request: web.Request) -> web.Response:
    """The gateway's live status (admin): every plugin's part (``proxy_status``), merged, and the
    core's own figures under ``gateway``."""
    await require_admin(request)
    app = request.app
    document = await app[HOOKS].status()
    gateway = document.setdefault("gateway", {})
    if isinstance(gateway, dict):
        gateway["time"] = time.time()
        gateway["ready"] = bool(app[READY]["ready"])
        gateway["in_flight"] = app[REGISTRY].get_sample_value("floodgate_in_flight_requests") or 0.0
    return web.Response(body=orjson.dumps(document), content_type="application/json")
