"""The control API under ``/_mock/``: ``GET stats``, ``POST behaviour`` (one model's
faults, as JSON) and ``POST reset``. Control requests are not counted in the stats.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from .faults import _error, _json
from .settings import STATE_KEY


async def _ctl_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY].stats.to_dict())


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
