"""The core's default behaviour, as ``trylast`` plugins any plugin can override."""

from __future__ import annotations

import logging

from .hookspecs import hookimpl
from .types import ANONYMOUS, STOP, Attempt, Principal, RequestContext, Route, Stop


class CoreDefaults:
    """Anonymous caller, route = the requested catalogue model, one attempt."""

    name = "core"

    @hookimpl(trylast=True)
    def proxy_authenticate(self, ctx: RequestContext) -> Principal:
        return ANONYMOUS

    @hookimpl(trylast=True)
    def proxy_route(self, ctx: RequestContext) -> Route:
        model = ctx.config.resolve(ctx.model) if ctx.model else None
        if model is None:
            raise ctx.config.unknown_model(ctx.model)
        return Route(name=model, targets=ctx.config.targets_with_fallbacks(model))

    @hookimpl(trylast=True)
    def proxy_next_attempt(self, ctx: RequestContext) -> Attempt | Stop:
        if ctx.attempts or ctx.route is None or not ctx.route.targets:
            return STOP
        return Attempt(ctx.route.targets[0])


class AccessLog:
    """One structured line per request on the ``floodgate.access`` logger.

    Only names, never secrets: the caller appears by its principal's name.
    ``worker=<n>`` says which worker process served it (1 without workers).
    """

    name = "accesslog"

    def __init__(self, worker: int = 1) -> None:
        self.log = logging.getLogger("floodgate.access")
        self.worker = worker

    @hookimpl(trylast=True)
    def proxy_finished(self, ctx: RequestContext) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        usage = ctx.usage
        target = ctx.target
        self.log.info(
            "request_id=%s worker=%d key=%s method=%s endpoint=%s model=%s used=%s status=%d duration_ms=%.1f "
            "overhead_ms=%.2f attempts=%d prompt_tokens=%s completion_tokens=%s estimated=%s cost_usd=%s%s%s",
            ctx.request_id, self.worker, ctx.principal.name, ctx.method, ctx.endpoint, ctx.model or "-",
            target.model if target else "-", ctx.status, ctx.timings.total * 1000, ctx.timings.overhead * 1000,
            len(ctx.attempts), usage.prompt_tokens if usage else "-", usage.completion_tokens if usage else "-",
            "yes" if ctx.usage_estimated else "no", f"{ctx.cost:.8f}" if ctx.cost is not None else "-",
            f" error={ctx.error}" if ctx.error else "", " client_disconnected=yes" if ctx.client_disconnected else "",
        )
