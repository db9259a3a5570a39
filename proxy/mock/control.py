"""The control API under ``/_mock/``: ``GET stats``, ``POST behaviour`` (one model's
faults, as JSON) and ``POST reset``. Control requests are not counted in the stats.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from .faults import _error, _json
from .quota import Quota
from .settings import STATE_KEY


async def _ctl_stats(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return _json({**state.stats.to_dict(), "quotas": {k: q.stats() for k, q in state.key_quotas.items()}})


async def _ctl_quota(request: web.Request) -> web.Response:
    """``{"key": "*", "requests_per_minute": 600, ...}`` puts a key under quota; no limits: removes it."""
    state = request.app[STATE_KEY]
    try:
        values = orjson.loads(await request.read())
        if not isinstance(values, dict) or not isinstance(key := values.pop("key", None), str):
            raise ValueError('expected a JSON object with a string "key"')
        if values:
            state.settings.quotas[key] = Quota(**values)
        else:
            state.settings.quotas.pop(key, None)
        state.key_quotas.pop(key, None)
    except (ValueError, TypeError) as exc:
        raise _error(400, str(exc)) from None
    return _json({"key": key, **(state.settings.quotas[key].to_dict() if key in state.settings.quotas else {})})


async def _ctl_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return _json({"ok": True})


async def _ctl_behaviour(request: web.Request) -> web.Response:
    try:
        values = orjson.loads(await request.read())
        if not isinstance(values, dict) or not isinstance(model := values.pop("model", None), str):
            raise ValueError('expected a JSON object with a string "model"')
        behaviour = request.app[STATE_KEY].set_behaviour(model, values)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise _error(400, str(exc)) from None
    return _json({"model": model, **behaviour.to_dict()})
