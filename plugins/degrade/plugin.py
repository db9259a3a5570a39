"""The degrade plugin: overload ladders applied to the requests of short routes."""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

import proxy

from .ladder import Ladder
from .settings import DegradeSettings, StepSettings

__all__ = ["DegradePlugin"]

#: Output-length fields per endpoint; a cap applies to the one the client (or its route) used.
MAX_FIELDS: dict[str, tuple[str, ...]] = {
    "chat/completions": ("max_tokens", "max_completion_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
_READING = "degrade.reading"  # (route name, predicted wait) read before short-circuit
_ROUTE = "degrade.route"  # the route whose ladder degraded the request


class DegradePlugin:
    """Per route, an ordered list of degradation steps applied while its capacity is short.

    :param clock: hysteresis and escalation run on its ``monotonic()``.
    """

    name = "degrade"
    settings_model = DegradeSettings

    def __init__(self, clock: proxy.Clock | None = None) -> None:
        self.clock: proxy.Clock = clock if clock is not None else proxy.LoopClock()
        self.settings = DegradeSettings()
        self.ladders: dict[str, Ladder] = {}
        self._faq: list[tuple[Ladder, int]] = []  # ladders with a faq step, and its index
        self.hooks: proxy.Hooks | None = None

    # -- configuration ------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        self.settings = settings = config.plugin_settings(self.name, self.settings_model)
        self.config = config
        errors = []
        for route, ladder in settings.routes.items():
            seen: dict[str, int] = {}
            for i, step in enumerate(ladder.steps):
                if step.label in seen:
                    errors.append(config.error(("plugins", self.name, "routes", route, "steps", i),
                                               f"steps.{seen[step.label]} is already called {step.label!r}: give "
                                               "each step a name of its own"))
                seen.setdefault(step.label, i)
        if errors:
            raise proxy.ConfigErrors(errors)
        self._requests = proxy.LabelCache(Counter(
            "floodgate_degrade_requests", "Requests served (or refused) by an overload step, by route and step",
            ["route", "step"], registry=registry))
        self._level = proxy.LabelCache(Gauge(
            "floodgate_degrade_steps_in_force", "Overload steps in force on a route (0: none; with workers: "
            "the most any live worker has in force)", ["route"], registry=registry, multiprocess_mode="livemax"))
        self._transitions = proxy.LabelCache(Counter(
            "floodgate_degrade_transitions", "Overload steps coming into force (on) and off, by route and step",
            ["route", "step", "to"], registry=registry))

    @proxy.hookimpl
    def proxy_startup(self, app: web.Application) -> None:
        """Route names are known once every plugin declared its own: check them, build the ladders."""
        config = self.config
        known = set(config.models) | set(config.route_names)
        errors = []
        for route, ladder in self.settings.routes.items():
            base = ("plugins", self.name, "routes", route)
            if route not in known:
                errors.append(config.error(base, f"unknown route {route!r} (known: {', '.join(sorted(known))})"))
            for i, step in enumerate(ladder.steps):
                if step.route is not None and (step.route not in known or step.route == route):
                    errors.append(config.error((*base, "steps", i, "route"),
                                               f"{step.route!r} is not another known route"))
        if errors:
            raise proxy.ConfigErrors(errors)
        now = self.clock.monotonic()
        self.ladders = {route: Ladder(route, settings, now) for route, settings in self.settings.routes.items()}
        self._faq = [(ladder, i) for ladder in self.ladders.values() for i, step in enumerate(ladder.steps)
                     if step.faq]
        for route in self.ladders:
            self._level(route).set(0)
        self.hooks = app[proxy.HOOKS]

    # -- per request ----------------------------------------------------------
    @proxy.hookimpl(tryfirst=True)
    def proxy_short_circuit(self, ctx: proxy.RequestContext) -> Awaitable[None] | None:
        """While a route's ``faq`` step is in force, let short-circuit plugins answer its requests
        more loosely (``ctx.relax``). Costs nothing while no such step is in force."""
        if not self._faq or not any(ladder.level > i for ladder, i in self._faq):
            return None
        return self._relax(ctx)

    async def _relax(self, ctx: proxy.RequestContext) -> None:
        assert self.hooks is not None
        route = await self.hooks.preview_route(ctx)
        ladder = self.ladders.get(route.name) if route is not None else None
        if ladder is None or route is None:
            return
        wait = await self.hooks.predicted_wait(ctx, route)
        if wait is None:
            return
        ctx.state[_READING] = (route.name, wait)
        self._observe(ladder, wait)
        if ladder.short(wait) and ctx.principal.policy.degrade:
            step = next((s for s in ladder.in_force if s.faq), None)
            if step is not None:
                ctx.relax = step.label
                ctx.state[_ROUTE] = ladder.route

    @proxy.hookimpl(tryfirst=True)  # before the budget reservation and the rate limiter: they see the result
    def proxy_admit(self, ctx: proxy.RequestContext) -> Awaitable[None] | None:
        route = ctx.route
        ladder = self.ladders.get(route.name) if route is not None else None
        if ladder is None:
            return None
        return self._degrade(ctx, ladder)

    async def _degrade(self, ctx: proxy.RequestContext, ladder: Ladder) -> None:
        assert self.hooks is not None and ctx.route is not None
        reading = ctx.state.pop(_READING, None)
        if reading is not None and reading[0] == ladder.route:
            wait: float | None = reading[1]
        else:
            wait = await self.hooks.predicted_wait(ctx, ctx.route)
            if wait is not None:
                self._observe(ladder, wait)
        if wait is None or not ladder.short(wait) or not ctx.principal.policy.degrade:
            return
        for step in ladder.in_force:
            if await self._apply(ctx, ladder, step):
                return
        now = self.clock.monotonic()
        while (more := ladder.escalate(now, wait)) is not None:  # nothing in force absorbed it: one more step
            self._transitions(ladder.route, more.label, "on").inc()
            self._level(ladder.route).set(ladder.level)
            if await self._apply(ctx, ladder, more):
                return

    async def _apply(self, ctx: proxy.RequestContext, ladder: Ladder, step: StepSettings) -> bool:
        """Apply ``step`` to the request; whether it absorbed it (no further step needed)."""
        assert self.hooks is not None and ctx.route is not None
        if step.route is not None:
            moved = await self.hooks.preview_route(ctx, step.route)
            if moved is None or moved.name == ctx.route.name:
                return False
            wait = await self.hooks.predicted_wait(ctx, moved)
            target = self.ladders.get(moved.name)
            if wait is not None and wait > (target.threshold if target is not None else ladder.threshold):
                return False  # the cheaper route is short too
            ctx.route = moved
        elif step.max_tokens is not None:
            route = ctx.route
            ctx.route = proxy.Route(route.name, tuple(_capped(t, ctx, step.max_tokens) for t in route.targets))
            self._mark(ctx, ladder, step)
            return False
        elif step.shed_below_priority is not None:
            if ctx.principal.policy.priority >= step.shed_below_priority:
                return False
            self._mark(ctx, ladder, step)
            raise _refusal(ladder.route, "requests of lower priority are shed", step.retry_after_s)
        elif step.reject:
            self._mark(ctx, ladder, step)
            raise _refusal(ladder.route, "requests are refused", step.retry_after_s)
        else:  # faq: applied before the short-circuit stage
            return False
        self._mark(ctx, ladder, step)
        return True

    @staticmethod
    def _mark(ctx: proxy.RequestContext, ladder: Ladder, step: StepSettings) -> None:
        ctx.degraded.append(step.label)
        ctx.state[_ROUTE] = ladder.route

    def _observe(self, ladder: Ladder, wait: float) -> None:
        before = ladder.level
        if ladder.observe(wait, self.clock.monotonic()):
            self._came_off(ladder, before)

    def _came_off(self, ladder: Ladder, before: int) -> None:
        for step in ladder.steps[ladder.level:before]:
            self._transitions(ladder.route, step.label, "off").inc()
        self._level(ladder.route).set(ladder.level)

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        if ctx.degraded:
            route = ctx.state.get(_ROUTE) or (ctx.route.name if ctx.route is not None else "-")
            for step in ctx.degraded:
                self._requests(route, step).inc()

    # -- status ---------------------------------------------------------------
    @proxy.hookimpl
    def proxy_status(self) -> dict[str, Any] | None:
        if not self.ladders:
            return None
        now = self.clock.monotonic()
        routes = {}
        for route, ladder in self.ladders.items():
            before = ladder.level
            if ladder.decay(now):
                self._came_off(ladder, before)
            in_force = [s.label for s in ladder.in_force]
            routes[route] = {"degraded": in_force[-1] if in_force else None, "steps_in_force": in_force,
                             "ladder": [s.label for s in ladder.steps]}
        return {"routes": routes}


def _capped(target: proxy.Target, ctx: proxy.RequestContext, cap: int) -> proxy.Target:
    """``target`` with its answer capped at ``cap`` tokens in the field the client (or its route) used."""
    fields = MAX_FIELDS.get(ctx.endpoint)
    if not fields:
        return target
    changes: dict[str, int] = {}
    given = False
    for field in fields:
        value = target.overrides.get(field, ctx.body.get(field))
        if value is None:
            continue
        given = True
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            changes[field] = cap
    if not given:
        changes[fields[0]] = cap
    return target.with_overrides(**changes) if changes else target


def _refusal(route: str, what: str, retry_after: float) -> proxy.Rejection:
    return proxy.Rejection(
        429, f"Route {route!r} is overloaded: {what} for now. Please try again in {retry_after:g}s.",
        code="overloaded", type="requests",
        headers={"retry-after": str(max(1, math.ceil(retry_after))),
                 "retry-after-ms": str(max(1, math.ceil(retry_after * 1000)))})
