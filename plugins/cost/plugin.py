"""The cost plugin: pricing, budgets (reserve at admission, settle at finish), metrics, ledger rows."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

import proxy

from .budgets import BudgetStore, Figures, Limits, MemoryBudgetStore, Reservation, Verdict, refusal
from .endpoint import usage_endpoint
from .factory import build_ledger
from .fleet import FleetBudgets, LedgerPool, fleet_budgets, ledger_pool, memory_budgets
from .gauges import BudgetGauges
from .ledger import Ledger
from .pricing import Prices
from .rows import Row
from .settings import CostSettings

__all__ = ["CostPlugin"]

log = logging.getLogger("floodgate.cost")

_STATE = "cost.reservation"
_ROW = "cost.row_id"
_POLICY_CACHE_SIZE = 10_000


class CostPlugin:
    """Prices every request, enforces budgets, keeps the usage ledger.

    :param clock: budget periods and ledger timestamps come from ``clock.wall()``.
    :param store: a fleet-wide :class:`~.budgets.BudgetStore` (e.g.
        :class:`~.redis_budgets.RedisBudgetStore`) to use whatever the state says; ``None``:
        chosen by the gateway's shared state (:mod:`.fleet`).
    """

    name = "cost"
    settings_model = CostSettings

    def __init__(self, *, clock: proxy.Clock | None = None, store: BudgetStore | None = None) -> None:
        self.clock: proxy.Clock = clock or proxy.LoopClock()
        self.settings = CostSettings()
        self.ledger: Ledger | None = None
        self.budgets = MemoryBudgetStore()
        self.shared: BudgetStore | FleetBudgets | None = store
        self._chosen = store is None
        self._ledgers = LedgerPool()
        self._holds_ledger = False
        self._settling: set[asyncio.Future[Figures | None]] = set()
        self.prices: Prices | None = None
        self._default = Limits(None, None)
        self._gauges = BudgetGauges(self.clock)
        self._policy_limits: dict[int, tuple[proxy.KeyPolicy, Limits]] = {}
        self._series: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}
        self._row_prefix = os.urandom(6).hex()
        self._rows = 0

    # -- configuration -----------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry, state: proxy.SharedState) -> None:
        self.settings = settings = config.plugin_settings(self.name, self.settings_model)
        if self._chosen:  # kept by the state: a reload keeps spending and reservations in flight
            if state.backend == "redis":
                self.shared = fleet_budgets(state)
            else:
                self.budgets = memory_budgets(state)
        self._ledgers = ledger_pool(state)
        self.prices = Prices(config, settings.default_max_tokens)
        self._default = Limits(settings.default_budget.daily_usd, settings.default_budget.monthly_usd)
        self.ledger = build_ledger(config, settings.ledger)

        self._tokens = Counter("floodgate_cost_tokens", "Tokens billed by upstreams, by model, key and type "
                               "(prompt includes cached)", ["model", "key", "type"], registry=registry)
        self._usd = Counter("floodgate_cost_usd", "US dollars spent, by model and key", ["model", "key"],
                            registry=registry)
        self._estimated = proxy.LabelCache(Counter(
            "floodgate_cost_estimated", "Requests whose usage the gateway had to estimate", ["model"],
            registry=registry))
        self._unpriced = proxy.LabelCache(Counter(
            "floodgate_cost_unpriced", "Requests that used an upstream at a cost the gateway cannot know "
            "(passthrough, models without a price)", ["key", "kind"], registry=registry))
        self._gauges.configure(registry, self.budgets, shared=self.shared is not None)
        self._policy_limits.clear()
        self._rejected = proxy.LabelCache(Counter(
            "floodgate_cost_budget_rejections", "Requests refused because a budget was used up",
            ["key", "period"], registry=registry))
        self._pending = proxy.CollectedGauge(
            "floodgate_cost_ledger_pending_rows", "Ledger rows not yet stored in the database",
            registry=registry, multiprocess_mode="livesum")

    @proxy.hookimpl
    def proxy_add_routes(self, app: web.Application) -> None:
        app.router.add_get("/-/usage", self._usage)

    @proxy.hookimpl
    def proxy_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        from .cli import add_usage_command  # not at the top: cli.py imports this module

        add_usage_command(subparsers)

    async def _usage(self, request: web.Request) -> web.Response:
        return await usage_endpoint(request, self.ledger, self.clock)

    # -- lifecycle -----------------------------------------------------------------
    @proxy.hookimpl
    async def proxy_startup(self, app: web.Application) -> None:
        """Open the ledger (storing orphaned journals first), then reload this period's spending."""
        if self.ledger is None:
            return
        self.ledger, opened = await self._ledgers.acquire(self.ledger)  # a reload shares the open one
        self._holds_ledger = True
        if self._pending.collected_here():  # one process: read when scraped, not set by every row
            ledger = self.ledger
            self._pending.before_collect = lambda: self._pending.set(ledger.pending)
        else:
            self.ledger.observe = self._pending.set
        if not opened:
            return  # spending was loaded when it was opened, and budgets are kept since
        now = self.clock.wall()
        self.budgets.roll(now)
        spent = await self.ledger.spent(self.budgets.month_start, self.budgets.day_start)
        if self.shared is not None:
            await self.shared.load(spent, now)
        else:
            self.budgets.load_now(spent, now)

    @proxy.hookimpl
    async def proxy_shutdown(self, app: web.Application) -> None:
        await self.settled()
        if self.ledger is not None and self._holds_ledger:
            self._holds_ledger = False
            await self._ledgers.release(self.ledger)  # the last configuration using it closes it

    # -- per request ---------------------------------------------------------------
    @proxy.hookimpl(tryfirst=True)  # its refusal comes first, and cancels a wait in a rate-limit queue
    def proxy_admit(self, ctx: proxy.RequestContext) -> proxy.Deferred | None:
        """Reserve the request's maximum cost (0 if unpriced) against the key's budgets; journal
        its provisional row. With a shared store the verdict is deferred (:class:`proxy.Deferred`)."""
        limits = self._limits(ctx.principal.policy)
        if not limits and self.ledger is None:
            return None
        assert self.prices is not None
        amount = self.prices.maximum(ctx)  # None: unpriced
        if not limits:
            self._begin(ctx, amount)
            return None
        key = ctx.principal.name
        if self.shared is not None:
            return self._reserve_shared(ctx, key, limits, amount)
        verdict = self.budgets.reserve_now(key, limits, amount or 0.0, self.clock.wall())
        self._decided(ctx, key, limits, amount, verdict)
        return None

    def _begin(self, ctx: proxy.RequestContext, amount: float | None) -> None:
        """The provisional row of an admitted request: if the gateway dies before the request
        finishes (with its answer perhaps already sent), this row stays, charged its maximum."""
        if self.ledger is None:
            return
        self._rows += 1
        row_id = ctx.state[_ROW] = f"{self._row_prefix}{self._rows:x}"
        route = ctx.route
        target = route.targets[0] if route is not None and route.targets else None
        try:
            self.ledger.begin(Row(
                row_id, ctx.request_id, self.clock.wall(), ctx.principal.name, ctx.model,
                target.model if target is not None else None, route.name if route else None, 0,
                ctx.estimated_prompt_tokens() if ctx.kind is proxy.EndpointKind.MODEL else 0, 0, 0, True,
                amount or 0.0, 0, 0.0, ctx.endpoint, None, ctx.kind.value, ctx.method, ctx.request_bytes, 0,
                amount is None))
        except Exception:  # the ledger observes: it never fails a request
            log.exception("usage ledger: the provisional row of request %s could not be queued", ctx.request_id)

    def _reserve_shared(self, ctx: proxy.RequestContext, key: str, limits: Limits,
                        amount: float | None) -> proxy.Deferred:
        """The shared store's verdict, deferred: its call is queued now and goes out with the rate
        limiter's (one round trip); the request waits for both after every admission hook ran."""
        assert self.shared is not None
        try:
            pending = self.shared.reserve(key, limits, amount or 0.0, self.clock.wall())
        except proxy.Rejection:
            raise  # the shared state is unavailable under on_error: reject
        except Exception as exc:  # a security stage: fail closed
            raise _unavailable(exc) from None
        return proxy.Deferred(self._await_verdict(ctx, key, limits, amount, pending))

    async def _await_verdict(self, ctx: proxy.RequestContext, key: str, limits: Limits, amount: float | None,
                             pending: Awaitable[Verdict]) -> None:
        try:
            verdict = await pending
        except proxy.Rejection:
            raise
        except Exception as exc:
            raise _unavailable(exc) from None
        self._decided(ctx, key, limits, amount, verdict)

    def _decided(self, ctx: proxy.RequestContext, key: str, limits: Limits, amount: float | None,
                 verdict: Verdict) -> None:
        self._gauges.limits[key] = limits
        if verdict.reservation is not None:
            ctx.state[_STATE] = verdict.reservation
            self._begin(ctx, amount)
            if self.shared is None:
                self._gauges.changed(key)
            return
        assert verdict.period is not None
        self._rejected(key, verdict.period).inc()
        raise refusal(key, amount or 0.0, verdict, self.clock.wall())

    @proxy.hookimpl
    def proxy_response(self, ctx: proxy.RequestContext, response: proxy.UpstreamResponse) -> None:
        assert self.prices is not None
        cost = self.prices.cost(ctx)
        if cost is not None:
            ctx.response_headers["x-floodgate-cost-usd"] = f"{cost:.8f}"

    @proxy.hookimpl(tryfirst=True)  # ctx.cost must be set before any other observer reads it
    def proxy_finished(self, ctx: proxy.RequestContext) -> Awaitable[None] | None:
        """Journal the row first (the response is out: it must not be lost), then settle and count."""
        if ctx.kind is proxy.EndpointKind.ADMIN:
            return None  # the gateway's own endpoints cost nothing and are not usage
        assert self.prices is not None
        now = self.clock.wall()
        cost = self.prices.cost(ctx)
        ctx.cost = cost
        key = ctx.principal.name
        usd = cost or 0.0
        if self.ledger is not None:
            self.ledger.append(self._row(ctx, now, cost))
        for loser in self._hedge_losers(ctx):
            loser_cost = self.prices.attempt_cost(loser)
            usd += loser_cost or 0.0
            if self.ledger is not None:
                self.ledger.append(self._loser_row(ctx, loser, now, loser_cost))
        target, usage = ctx.target, ctx.usage
        if cost is None:
            self._unpriced(key, ctx.kind.value).inc()
        elif ctx.reply is None and target is not None and usage is not None and target.model != "-":
            prompt, completion, cached, spent = self._children(target.model, key)
            prompt.inc(usage.prompt_tokens)
            completion.inc(usage.completion_tokens)
            if usage.cached_tokens:
                cached.inc(usage.cached_tokens)
            spent.inc(usd)
            if ctx.usage_estimated:
                self._estimated(target.model).inc()
        reservation: Reservation | None = ctx.state.pop(_STATE, None)
        if self.shared is not None:
            if reservation is not None or usd:  # in the background: the response is out, the row journaled
                self._settle_shared(key, self.shared.settle(key, reservation, usd, now))
            return None
        self.budgets.settle_now(key, reservation, usd, now)
        limits = self._limits(ctx.principal.policy)
        if limits:
            self._gauges.limits[key] = limits
            self._gauges.changed(key)
        return None

    async def settled(self) -> None:
        """Wait for the settlements still on their way to the shared store."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        self._gauges.flush()  # their figures are in: the gauges show them now, not a turn later

    def _settle_shared(self, key: str, pending: Awaitable[Figures | None]) -> None:
        """Wait in the background for the settlement's reply (its call was queued with the request's
        other finishing calls); a future is followed by a callback, anything else by a task."""
        settling = pending if isinstance(pending, asyncio.Future) else asyncio.ensure_future(pending)
        self._settling.add(settling)
        settling.add_done_callback(lambda done: self._settled(key, done))

    def _settled(self, key: str, done: asyncio.Future[Figures | None]) -> None:
        self._settling.discard(done)
        if done.cancelled():
            return
        if (exc := done.exception()) is not None:  # an observer: fail open (the lease expires; the ledger has the row)
            log.error("budget store: settling a request of key %r failed (%s)", key, type(exc).__name__)
            return
        figures = done.result()
        if figures is not None:  # the fleet's figures, from the same round trip
            self._gauges.fleet(key, figures)

    # -- helpers ---------------------------------------------------------------------
    def _row(self, ctx: proxy.RequestContext, now: float, cost: float | None) -> Row:
        row_id = ctx.state.get(_ROW)
        if row_id is None:
            self._rows += 1
            row_id = f"{self._row_prefix}{self._rows:x}"
        target, usage, route, reply = ctx.target, ctx.usage, ctx.route, ctx.reply
        passthrough = ctx.kind is proxy.EndpointKind.PASSTHROUGH
        return Row(
            row_id, ctx.request_id, now, ctx.principal.name, ctx.model,
            None if target is None or passthrough else target.model, route.name if route else None,
            len(ctx.attempts), usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
            usage.cached_tokens if usage else 0, ctx.usage_estimated, cost or 0.0, ctx.status,
            ctx.timings.total * 1000.0, ctx.endpoint, reply.source if reply else None, ctx.kind.value,
            ctx.method, ctx.request_bytes, ctx.response_bytes, cost is None,
            deployment=target.deployment if target is not None and not passthrough else None,
            degraded=", ".join(ctx.degraded) if ctx.degraded else None)

    @staticmethod
    def _hedge_losers(ctx: proxy.RequestContext) -> list[proxy.AttemptRecord]:
        """Attempts that lost a hedged race: the upstream did work for them, so they are billed."""
        return [a for a in ctx.attempts if a.hedged and not a.committed and a.usage is not None]

    def _loser_row(self, ctx: proxy.RequestContext, attempt: proxy.AttemptRecord, now: float,
                   cost: float | None) -> Row:
        self._rows += 1
        usage = attempt.usage
        assert usage is not None
        return Row(
            f"{self._row_prefix}{self._rows:x}", ctx.request_id, now, ctx.principal.name, ctx.model,
            attempt.target.model, ctx.route.name if ctx.route else None, 1, usage.prompt_tokens,
            usage.completion_tokens, usage.cached_tokens, attempt.usage_estimated, cost or 0.0, 0,
            attempt.duration * 1000.0, ctx.endpoint, None, ctx.kind.value, ctx.method, 0, 0, cost is None,
            hedged=True, deployment=attempt.target.deployment)

    def _limits(self, policy: proxy.KeyPolicy) -> Limits:
        """A key's caps: its own values, else the plugin's default (worked out once per policy)."""
        budget = policy.budget
        if budget is None:
            return self._default
        cached = self._policy_limits.get(id(policy))
        if cached is not None and cached[0] is policy:
            return cached[1]
        limits = Limits(budget.limit("daily_usd", self._default.daily),
                        budget.limit("monthly_usd", self._default.monthly))
        if len(self._policy_limits) >= _POLICY_CACHE_SIZE:
            self._policy_limits.clear()
        self._policy_limits[id(policy)] = (policy, limits)  # the policy is kept: its id stays its own
        return limits

    def _children(self, model: str, key: str) -> tuple[Any, Any, Any, Any]:
        """(prompt, completion, cached) token counters and the USD counter: one lookup per request."""
        children = self._series.get((model, key))
        if children is None:
            tokens = self._tokens
            children = self._series[(model, key)] = (
                tokens.labels(model, key, "prompt"), tokens.labels(model, key, "completion"),
                tokens.labels(model, key, "cached"), self._usd.labels(model, key))
        return children


def _unavailable(exc: Exception) -> proxy.Rejection:
    """The budget store failed: budgeted requests are refused (a security stage fails closed)."""
    log.error("budget store unavailable (%s): budgeted requests are refused", type(exc).__name__)
    return proxy.Rejection(503, "The budget service is unavailable; please retry shortly.",
                           code="budget_unavailable", type="server_error", headers={"retry-after": "1"})
