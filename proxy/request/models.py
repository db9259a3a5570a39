"""``GET /v1/models`` and ``GET /v1/models/{id}``: the catalogue, aliases and routes."""

from __future__ import annotations

import orjson
from aiohttp import web

from ..config import Config
from ..errors import Rejection
from ..hooks import Hooks
from ..types import RequestContext
from .render import model_list, model_object


async def serve_models(request: web.Request, ctx: RequestContext, config: Config, hooks: Hooks) -> web.Response:
    if request.method != "GET":
        raise Rejection(405, f"method {request.method} is not allowed here; use GET",
                        code="method_not_allowed", should_retry=False, headers={"Allow": "GET"})
    ctx.principal = await hooks.authenticate(ctx)
    model_id = request.match_info.get("model_id")
    if model_id is None:
        body = model_list(config)
    elif (config.resolve(model_id) is not None or model_id in config.aliases
          or model_id in config.route_names):
        ctx.model = model_id
        body = orjson.dumps(model_object(model_id))
    else:
        raise config.unknown_model(model_id)
    ctx.status = 200
    return web.Response(body=body, content_type="application/json",
                        headers={"x-request-id": ctx.request_id, **ctx.response_headers})
