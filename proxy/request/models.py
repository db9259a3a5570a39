"""``GET /v1/models`` and ``GET /v1/models/{id}``, per key.

A key sees exactly the names it may use (its policy's ``allows_model``): the exact catalogue
models, the aliases, the routes plugins declared, and — when the catalogue has patterns —
the models the patterns' upstreams list (``GET <base_url>/models``) that a pattern serves,
under the name clients use for them. ``/v1/models/{id}`` answers 200 for exactly those
names and 404 ``model_not_found`` for any other, as OpenAI does for a model a key cannot use.

Upstream lists are asked for only when someone lists models, at most once per
:data:`UPSTREAM_LIST_TTL` seconds per upstream (concurrent callers share one request); an
upstream that fails to answer keeps its last good list (none at first) until it answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ..config import Config
from ..hooks import Hooks
from ..policy import KeyPolicy
from ..types import RequestContext
from ..upstream import UpstreamError, Upstreams
from .render import model_list, model_object

log = logging.getLogger("floodgate")

#: Seconds an upstream's model list is reused.
UPSTREAM_LIST_TTL = 60.0
#: Seconds to wait for an upstream's model list (its own timeouts when shorter).
UPSTREAM_LIST_TIMEOUT = 5.0
#: Models read from one upstream's list at most.
MAX_UPSTREAM_MODELS = 10_000


class ModelList:
    """The names one application's keys may be shown, and the upstream lists behind patterns."""

    def __init__(self, config: Config, upstreams: Upstreams) -> None:
        self.config = config
        self.upstreams = upstreams
        # Upstreams a pattern sends to: only these are asked for their lists.
        self._patterns = frozenset(config.patterns)
        self._pattern_upstreams = sorted({config.models[p].upstream for p in config.patterns})
        self._listed: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}  # upstream -> (when, id -> object)
        self._fetching: dict[str, asyncio.Task[None]] = {}

    def configured(self) -> list[str]:
        """Exact catalogue models, aliases and declared routes, in that order (each once)."""
        config = self.config
        names = [m for m in config.models if m not in self._patterns]
        names += [a for a in config.aliases if a not in config.models]
        names += sorted(r for r in config.route_names if r not in config.models and r not in config.aliases)
        return names

    async def pattern_models(self) -> dict[str, dict[str, Any]]:
        """Client-facing name → the upstream's model object, for names only a pattern serves."""
        if not self._pattern_upstreams:
            return {}
        await asyncio.gather(*(self._refresh(u) for u in self._pattern_upstreams))
        out: dict[str, dict[str, Any]] = {}
        for upstream in self._pattern_upstreams:
            for upstream_id, obj in self._listed.get(upstream, (0.0, {}))[1].items():
                for name in self.config.listed_names(upstream, upstream_id):
                    out.setdefault(name, obj)
        return out

    async def for_key(self, policy: KeyPolicy) -> list[dict[str, Any]]:
        """The model objects this key may see, in a stable order."""
        objects = [model_object(name) for name in self.configured() if policy.allows_model(name)]
        listed = await self.pattern_models()
        objects += [model_object(name, created=obj.get("created"), owned_by=obj.get("owned_by"))
                    for name, obj in sorted(listed.items()) if policy.allows_model(name)]
        return objects

    async def one(self, name: str, policy: KeyPolicy) -> dict[str, Any] | None:
        """The model object of ``name`` if this key may see it, else ``None``."""
        if not policy.allows_model(name):
            return None
        config = self.config
        if name in config.aliases or name in config.route_names or (
                name in config.models and name not in self._patterns):
            return model_object(name)
        if config.resolve(name) is None:
            return None
        obj = (await self.pattern_models()).get(name)
        return model_object(name, created=obj.get("created"), owned_by=obj.get("owned_by")) if obj else None

    # -- upstream lists ---------------------------------------------------------
    async def _refresh(self, upstream: str) -> None:
        listed = self._listed.get(upstream)
        if listed is not None and time.monotonic() - listed[0] < UPSTREAM_LIST_TTL:
            return
        task = self._fetching.get(upstream)
        if task is None:
            task = self._fetching[upstream] = asyncio.ensure_future(self._fetch(upstream))
            task.add_done_callback(lambda _: self._fetching.pop(upstream, None))
        await asyncio.shield(task)

    async def _fetch(self, upstream: str) -> None:
        timeouts = self.config.upstream_timeouts(upstream).capped(UPSTREAM_LIST_TIMEOUT)
        try:
            response = await self.upstreams.open(upstream, "GET", "models", body=None, headers={}, timeouts=timeouts,
                                                 query="")
            try:
                async with asyncio.timeout(timeouts.total):
                    raw = await response.read()
            finally:
                response.release()
            models = _parse_list(orjson.loads(raw))
        except (UpstreamError, TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, ValueError) as exc:
            log.warning("upstream %r: could not list its models (%s); names its patterns serve are listed "
                        "from its last good answer", upstream, getattr(exc, "detail", type(exc).__name__))
            previous = self._listed.get(upstream)
            # Asked again after the TTL, not on every listing.
            self._listed[upstream] = (time.monotonic(), previous[1] if previous else {})
            return
        self._listed[upstream] = (time.monotonic(), models)


def _parse_list(data: Any) -> dict[str, dict[str, Any]]:
    """``{"data": [{"id": ...}, ...]}`` → id → object (objects without a string id are skipped)."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError("not a model list")
    return {item["id"]: item for item in items[:MAX_UPSTREAM_MODELS]
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]}


async def serve_models(request: web.Request, ctx: RequestContext, models: ModelList, hooks: Hooks) -> web.Response:
    ctx.principal = await hooks.authenticate(ctx)
    policy = ctx.principal.policy
    model_id = request.match_info.get("model_id")
    if model_id is None:
        body = model_list(await models.for_key(policy))
    else:
        obj = await models.one(model_id, policy)
        if obj is None:
            raise models.config.unknown_model(model_id)
        ctx.model = model_id
        body = orjson.dumps(obj)
    ctx.status = 200
    return web.Response(body=body, content_type="application/json",
                        headers={"x-request-id": ctx.request_id, **ctx.response_headers})
