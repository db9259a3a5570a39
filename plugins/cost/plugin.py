"""The cost plugin: pricing, budgets, metrics, the ledger rows and ``GET /-/usage``."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

import proxy

from .ledger import Ledger, Row
from .report import GROUPS, parse_since, periods
from .settings import CostSettings, ledger_path

__all__ = ["CostPlugin"]

log = logging.getLogger("floodgate.cost")

_ADJECTIVE = {"day": "daily", "month": "monthly"}


class CostPlugin:
    """Prices every request, enforces budgets, keeps the usage ledger."""

    name = "cost"

    def __init__(self) -> None:
        self.settings = CostSettings()
        self.ledger: Ledger | None = None
        self._prices: dict[str, proxy.Price] = {}
        self._default: tuple[float | None, float | None] = (None, None)
        self._spent_day: dict[str, float] = {}
        self._spent_month: dict[str, float] = {}
        self._budgets: dict[str, tuple[float | None, float | None]] = {}  # last seen, for the gauges
        self._day_start = self._day_end = self._month_start = self._month_end = 0.0
        self._series: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}

    # -- configuration -----------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        self.settings = settings = config.plugin_settings(self.name, CostSettings)
        self._prices = {name: model.price for name, model in config.models.items() if model.price is not None}
        self._default = (settings.default_budget.daily_usd, settings.default_budget.monthly_usd)
        ledger = settings.ledger
        if ledger.enabled:
            self.ledger = Ledger(ledger_path(config, ledger), batch_size=ledger.batch_size,
                                 flush_interval=ledger.flush_interval_s, warn_backlog=ledger.warn_backlog)
        self._roll(time.time())

        self._tokens = Counter("floodgate_cost_tokens", "Tokens billed by upstreams, by model, key and type "
                               "(prompt includes cached)", ["model", "key", "type"], registry=registry)
        self._usd = Counter("floodgate_cost_usd", "US dollars spent, by model and key", ["model", "key"],
                            registry=registry)
        self._estimated = proxy.LabelCache(Counter(
            "floodgate_cost_estimated", "Requests whose usage the gateway had to estimate", ["model"],
            registry=registry))
        self._remaining = proxy.LabelCache(Gauge(
            "floodgate_cost_budget_remaining_usd", "US dollars left in a key's budget for the current period",
            ["key", "period"], registry=registry))
        self._rejected = proxy.LabelCache(Counter(
            "floodgate_cost_budget_rejections", "Requests refused because a budget was used up",
            ["key", "period"], registry=registry))
        pending = Gauge("floodgate_cost_ledger_pending_rows", "Ledger rows waiting to be written",
                        registry=registry)
        pending.set_function(lambda: self.ledger.pending if self.ledger is not None else 0)

    @proxy.hookimpl
    def proxy_add_routes(self, app: web.Application) -> None:
        app.router.add_get("/-/usage", self._usage_endpoint)

    @proxy.hookimpl
    def proxy_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        from .cli import add_usage_command  # not at the top: cli.py imports this module

        add_usage_command(subparsers)

    # -- lifecycle -----------------------------------------------------------------
    @proxy.hookimpl
    async def proxy_startup(self, app: web.Application) -> None:
        if self.ledger is None:
            return
        await self.ledger.open()
        now = time.time()
        self._roll(now)
        for key, (day, month) in (await self.ledger.spent(self._month_start, self._day_start)).items():
            self._spent_day[key] = day
            self._spent_month[key] = month

    @proxy.hookimpl
    async def proxy_shutdown(self, app: web.Application) -> None:
        if self.ledger is not None:
            await self.ledger.close()

    # -- per request ---------------------------------------------------------------
    @proxy.hookimpl(tryfirst=True)  # refuse before waiting in a rate-limit queue
    def proxy_admit(self, ctx: proxy.RequestContext) -> None:
        principal = ctx.principal
        daily, monthly = self._limits(principal.policy)
        if daily is None and monthly is None:
            return
        now = time.time()
        if now >= self._day_end:
            self._roll(now)
        key = principal.name
        if daily is not None and self._spent_day.get(key, 0.0) >= daily:
            self._refuse(key, "day", daily, self._day_end)
        if monthly is not None and self._spent_month.get(key, 0.0) >= monthly:
            self._refuse(key, "month", monthly, self._month_end)

    @proxy.hookimpl
    def proxy_response(self, ctx: proxy.RequestContext, response: proxy.UpstreamResponse) -> None:
        ctx.response_headers["x-floodgate-cost-usd"] = f"{self._cost(ctx):.8f}"

    @proxy.hookimpl(tryfirst=True)  # ctx.cost must be set before any other observer reads it
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        if ctx.kind is proxy.EndpointKind.ADMIN:
            return  # the gateway's own endpoints cost nothing and are not usage
        now = time.time()
        if now >= self._day_end:
            self._roll(now)
        key = ctx.principal.name
        target = ctx.target
        usage = ctx.usage
        cost = self._cost(ctx)
        ctx.cost = cost
        if ctx.reply is None and target is not None and usage is not None and target.model in self._prices:
            prompt, completion, cached, usd = self._children(target.model, key)
            prompt.inc(usage.prompt_tokens)
            completion.inc(usage.completion_tokens)
            if usage.cached_tokens:
                cached.inc(usage.cached_tokens)
            usd.inc(cost)
            if ctx.usage_estimated:
                self._estimated(target.model).inc()
        if cost:
            self._spent_day[key] = self._spent_day.get(key, 0.0) + cost
            self._spent_month[key] = self._spent_month.get(key, 0.0) + cost
        self._update_gauges(key, ctx.principal.policy)
        if self.ledger is not None:
            route = ctx.route
            reply = ctx.reply
            self.ledger.append(Row(
                ctx.request_id, now, key, ctx.model, target.model if target else None,
                route.name if route else None, len(ctx.attempts),
                usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                usage.cached_tokens if usage else 0, ctx.usage_estimated, cost, ctx.status,
                ctx.timings.total * 1000.0, ctx.endpoint, reply.source if reply else None))

    # -- helpers ---------------------------------------------------------------------
    def _cost(self, ctx: proxy.RequestContext) -> float:
        """The request's cost in USD (0 without an upstream or usage)."""
        target = ctx.target
        if ctx.reply is not None or target is None or ctx.usage is None:
            return 0.0
        price = self._prices.get(target.model)
        return price.cost(ctx.usage) if price is not None else 0.0

    def _limits(self, policy: proxy.KeyPolicy) -> tuple[float | None, float | None]:
        """(daily, monthly) budget of a key: its own values, else the plugin's default."""
        budget = policy.budget
        if budget is None:
            return self._default
        return budget.limit("daily_usd", self._default[0]), budget.limit("monthly_usd", self._default[1])

    def _refuse(self, key: str, period: str, budget: float, reset: float) -> None:
        self._rejected(key, period).inc()
        reset_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset))
        raise proxy.Rejection(
            429, f"Key {key!r} has used up its {_ADJECTIVE[period]} budget of ${budget:.6g}; it resets at {reset_at}.",
            code="insufficient_quota", type="insufficient_quota", should_retry=False)

    def _children(self, model: str, key: str) -> tuple[Any, Any, Any, Any]:
        """(prompt, completion, cached) token counters and the USD counter: one lookup per request."""
        children = self._series.get((model, key))
        if children is None:
            tokens = self._tokens
            children = self._series[(model, key)] = (
                tokens.labels(model, key, "prompt"), tokens.labels(model, key, "completion"),
                tokens.labels(model, key, "cached"), self._usd.labels(model, key))
        return children

    def _update_gauges(self, key: str, policy: proxy.KeyPolicy) -> None:
        limits = self._limits(policy)
        if limits == (None, None):
            return
        self._budgets[key] = limits
        self._set_remaining(key, limits)

    def _set_remaining(self, key: str, limits: tuple[float | None, float | None]) -> None:
        daily, monthly = limits
        if daily is not None:
            self._remaining(key, "day").set(max(0.0, daily - self._spent_day.get(key, 0.0)))
        if monthly is not None:
            self._remaining(key, "month").set(max(0.0, monthly - self._spent_month.get(key, 0.0)))

    def _roll(self, now: float) -> None:
        """Enter the UTC day (and maybe month) containing ``now``: its spending starts at 0."""
        day_start, day_end, month_start, month_end = periods(now)
        if month_start != self._month_start:
            self._spent_month.clear()
        if day_start != self._day_start:
            self._spent_day.clear()
        self._day_start, self._day_end, self._month_start, self._month_end = day_start, day_end, month_start, month_end
        for key, limits in self._budgets.items():
            self._set_remaining(key, limits)

    async def _usage_endpoint(self, request: web.Request) -> web.Response:
        """``GET /-/usage?since=24h&by=model``: the ledger summary as JSON (admins only).

        A :class:`proxy.Rejection` raised here is answered as OpenAI's JSON error by the core.
        """
        await proxy.require_admin(request)
        by = request.query.get("by", "key")
        if by not in GROUPS:
            raise proxy.Rejection(400, f"'by' must be one of: {', '.join(GROUPS)}", param="by",
                                  code="invalid_value", should_retry=False)
        since_text = request.query.get("since")
        try:
            since = parse_since(since_text) if since_text else None
        except ValueError as exc:
            raise proxy.Rejection(400, f"'since': {exc}", param="since", code="invalid_value",
                                  should_retry=False) from None
        if self.ledger is None:
            raise proxy.Rejection(404, "the usage ledger is disabled (plugins.cost.ledger.enabled)",
                                  code="ledger_disabled", should_retry=False)
        report = await self.ledger.report(since=since, by=by)
        return web.Response(body=orjson.dumps(report), content_type="application/json")
