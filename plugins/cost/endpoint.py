"""``GET /-/usage``: the ledger summary as JSON, for admins; its query validated strictly."""

from __future__ import annotations

import orjson
from aiohttp import web

import proxy

from .ledger import Ledger
from .report import GROUPS, parse_since

__all__ = ["usage_endpoint"]

_PARAMS = ("by", "since")


def _invalid(param: str, message: str) -> proxy.Rejection:
    return proxy.Rejection(400, message, param=param, code="invalid_value", should_retry=False)


async def usage_endpoint(request: web.Request, ledger: Ledger | None, clock: proxy.Clock) -> web.Response:
    """``GET /-/usage?since=24h&by=model``. Any other parameter, a repeated one or a bad value is a
    400 naming it (a :class:`proxy.Rejection` is answered as OpenAI's JSON error by the core)."""
    await proxy.require_admin(request)
    query = request.query
    for name in query:
        if name not in _PARAMS:
            raise _invalid(proxy.shorten(name, 40), f"unknown query parameter {proxy.shorten(name, 40)!r} "
                           f"(expected: {', '.join(_PARAMS)})")
        if len(query.getall(name)) > 1:
            raise _invalid(name, f"{name!r} is given more than once")
    by = query.get("by", "key")
    if by not in GROUPS:
        raise _invalid("by", f"'by' must be one of: {', '.join(GROUPS)} (got {proxy.shorten(by, 40)!r})")
    since_text = query.get("since")
    try:
        since = parse_since(since_text, clock.wall()) if since_text else None
    except ValueError as exc:
        raise _invalid("since", f"'since': {exc}") from None
    if ledger is None:
        raise proxy.Rejection(404, "the usage ledger is disabled (plugins.cost.ledger.enabled)",
                              code="ledger_disabled", should_retry=False)
    report = await ledger.report(since=since, by=by)
    return web.Response(body=orjson.dumps(report), content_type="application/json")
