"""The traffic meter: live requests per second, requests in flight and cost per minute, per route
and per deployment, for ``GET /-/status`` and ``floodgate status`` (the ``traffic`` plugin).

An observer: it counts what other stages decided and never changes a request. Per name it
keeps one-second buckets of the last minute (requests, and US dollars as the cost plugin
priced them in ``ctx.cost``): requests per second over the last ``window_s`` seconds, cost
over the last minute. Routes and deployments of names only a catalogue pattern serves are
counted under the pattern, so the meter's memory is bounded by the config. Settings:
:class:`TrafficSettings` (``plugins.traffic`` in ``docs/configuration.md``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import proxy

__all__ = ["Meter", "TrafficPlugin", "TrafficSettings"]

_ADMITTED = "traffic.route"
_MINUTE = 60


class TrafficSettings(proxy.Settings):
    """The traffic meter: requests per second, requests in flight and cost per minute, per route
    and per deployment, for `floodgate status`. An observer: it never changes a request."""

    window_s: proxy.PositiveInt = 10
    """Requests per second are averaged over this many seconds (cost per minute: always the last
    minute)."""


class Meter:
    """Requests and cost of one name over the last minute, in one-second buckets."""

    __slots__ = ("buckets", "in_flight")

    def __init__(self) -> None:
        self.buckets: deque[list[float]] = deque()  # [second, requests, usd]
        self.in_flight = 0

    def add(self, now: float, requests: int, usd: float) -> None:
        second = float(int(now))
        buckets = self.buckets
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0.0, 0.0])
            while buckets[0][0] <= second - _MINUTE:
                buckets.popleft()
        buckets[-1][1] += requests
        buckets[-1][2] += usd

    def rate(self, now: float, window: int) -> float:
        """Requests per second over the last ``window`` whole seconds."""
        start = int(now) - window
        return sum(b[1] for b in self.buckets if start <= b[0] < int(now)) / window

    def cost_per_minute(self, now: float) -> float:
        start = int(now) - _MINUTE
        return sum(b[2] for b in self.buckets if b[0] > start)


class TrafficPlugin:
    """Counts requests per route and attempts per deployment; reports them in ``/-/status``.

    :param clock: the buckets' seconds come from its ``monotonic()``.
    """

    name = "traffic"
    settings_model = TrafficSettings

    def __init__(self, clock: proxy.Clock | None = None) -> None:
        self.clock: proxy.Clock = clock if clock is not None else proxy.LoopClock()
        self.window = TrafficSettings().window_s
        self.routes: dict[str, Meter] = {}
        self.deployments: dict[str, Meter] = {}
        self.gateway = Meter()

    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config) -> None:
        self.window = config.plugin_settings(self.name, self.settings_model).window_s
        self.config = config
        self._known_routes = frozenset(config.models) | config.route_names

    def _route(self, route: proxy.Route) -> Meter:
        name = route.name
        if name not in self._known_routes and name not in self.config.route_names:
            name = self.config.catalogue_name(name) or "-"  # a pattern-served model's own route
        meter = self.routes.get(name)
        if meter is None:
            meter = self.routes[name] = Meter()
        return meter

    def _deployment(self, target: proxy.Target) -> Meter:
        entry = target.model if target.model in self.config.models else self.config.catalogue_name(target.model)
        name = f"{entry}@{target.deployment}" if target.deployment is not None else str(entry)
        meter = self.deployments.get(name)
        if meter is None:
            meter = self.deployments[name] = Meter()
        return meter

    # trylast: after the ladder may have moved it. The limits' decisions may be deferred (proxy.Deferred),
    # so a request they then refuse or queue counts from here until it finishes.
    @proxy.hookimpl(trylast=True)
    def proxy_admit(self, ctx: proxy.RequestContext) -> None:
        if ctx.route is not None:
            meter = self._route(ctx.route)
            meter.in_flight += 1
            ctx.state[_ADMITTED] = meter

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        if ctx.kind is not proxy.EndpointKind.MODEL:
            return
        now = self.clock.monotonic()
        usd = ctx.cost or 0.0
        admitted: Meter | None = ctx.state.pop(_ADMITTED, None)
        if admitted is not None:
            admitted.in_flight -= 1
        if ctx.route is not None:
            (admitted or self._route(ctx.route)).add(now, 1, usd)
        self.gateway.add(now, 1, usd)
        answered = ctx.target if ctx.attempts else None
        for attempt in ctx.attempts:
            self._deployment(attempt.target).add(now, 1, usd if attempt.target is answered else 0.0)

    @proxy.hookimpl
    def proxy_status(self) -> dict[str, Any]:
        now, window = self.clock.monotonic(), self.window

        def row(meter: Meter) -> dict[str, float]:
            return {"requests_per_s": round(meter.rate(now, window), 2), "in_flight": meter.in_flight,
                    "cost_per_min_usd": round(meter.cost_per_minute(now), 6)}

        deployments = {}
        for name, meter in self.deployments.items():
            deployments[name] = row(meter)
            del deployments[name]["in_flight"]  # attempts: the rate limiter knows what is in flight
        gateway = row(self.gateway)
        del gateway["in_flight"]  # the core reports every request it is handling
        return {"gateway": gateway, "routes": {name: row(m) for name, m in self.routes.items()},
                "deployments": deployments}


floodgate_plugin = TrafficPlugin
