"""The ``ratelimit`` plugin: admission against the buckets, settlement when a request ends."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

import proxy

from .deployments import Deployment, Deployments, used_on
from .fleet import KeptStores, kept_stores
from .inflight import FULL, InFlight
from .outlook import predicted_wait, status
from .placement import choose, peek_claims
from .plan import CONCURRENCY, TOKENS, Plan, Planner, Spec
from .queue import AdmissionQueue
from .responses import Rejections, set_headers
from .settings import RateLimitSettings
from .store import BucketStore, Claim, Grant, MemoryBucketStore, Return

if TYPE_CHECKING:
    from aiohttp import web
    from redis.asyncio import Redis

    from .redis_store import RedisBucketStore

__all__ = ["RateLimitPlugin"]

log = logging.getLogger("floodgate.ratelimit")

_STATE = "ratelimit.admission"
#: Seconds before its deadline a waiter must be due to be queued: its admission and its deadline
#: are then never due together (a late event loop still runs the earlier timer first).
SLACK = 0.001


class Admission(NamedTuple):
    """What an admitted request took, and from which store (settled there, whatever the store now)."""

    plan: Plan
    store: BucketStore
    lease: str
    since: float
    deployment: Deployment | None  # where it was placed, when its model has deployments


class RateLimitPlugin:
    """Token buckets for requests, tokens and concurrency; queue or reject when empty.

    :param store: where the buckets live (default: chosen by the gateway's shared state,
        :mod:`.fleet`: this process's memory, or Redis with a local share as the fallback).
    :param clock: time for the buckets, the queue's timers and its deadlines.
    """

    name = "ratelimit"
    settings_model = RateLimitSettings

    def __init__(self, store: BucketStore | None = None, *, clock: proxy.Clock | None = None) -> None:
        self.clock: proxy.Clock = clock if clock is not None else proxy.LoopClock()
        self.store: BucketStore = store if store is not None else MemoryBucketStore()
        self._kept: KeptStores | None = None  # the state's stores, unless one was given
        self._chosen = store is None
        self._acquired = False
        self.settings = RateLimitSettings()
        self._queueing = True
        self._rejections = Rejections(self.settings.queue, CollectorRegistry())
        self._planner = Planner(self.settings, None, self._rejections.too_large)
        self._m_admitted = Counter("floodgate_ratelimit_admitted", "", registry=CollectorRegistry())
        self._background: set[asyncio.Future[None]] = set()
        self.queue = AdmissionQueue(self.clock, self.store, admit=self._admitted_from_queue,
                                    reject=self._rejection, give_back=self._give_back)
        self.deployments: Deployments | None = None
        self.inflight: InFlight | None = None
        self._unavailable: Any = lambda ctx, target: None

    # -- configuration ------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry, state: proxy.SharedState) -> None:
        settings = config.plugin_settings(self.name, self.settings_model)
        errors = [
            config.error(("plugins", self.name, section, name),
                         f"unknown {noun} {name!r} (known: {', '.join(known) or 'none'})")
            for section, noun, known, given in (("models", "model", config.models, settings.models),
                                                ("upstreams", "upstream", config.upstreams, settings.upstreams))
            for name in given if name not in known
        ]
        if errors:
            raise proxy.ConfigErrors(errors)
        self.settings = settings
        self._queueing = settings.mode == "queue"
        self._rejections = Rejections(settings.queue, registry)
        self.deployments = deployments = Deployments(config, settings.deployments, registry, random.Random())
        self._planner = Planner(settings, next(iter(config.upstreams), None), self._rejections.too_large,
                                config.catalogue_name, deployments.specs, bool(deployments.by_key))
        self.queue.refresh = deployments.refresh
        self.inflight = InFlight(deployments, self._settle, self.clock)
        self._m_admitted = Counter("floodgate_ratelimit_admitted", "Requests admitted by the rate limiter",
                                   registry=registry)
        self.queue.configure(settings.queue, settings.shared.recheck_ms, registry)
        if self._chosen:  # the buckets of the previous configuration, kept by the state
            self._kept = kept_stores(state)
            self.use_store(self._kept.store(settings.shared))

    def use_store(self, store: BucketStore) -> None:
        """Decide against ``store`` from now on: e.g. a :class:`~.store.LocalShareStore` while the
        shared store is unreachable, and the shared one again once it is back. Requests admitted
        by the previous store settle there."""
        self.store = store
        self.queue.store = store

    def shared_store(self, redis: Redis, prefix: str) -> RedisBucketStore:
        """A :class:`~.redis_store.RedisBucketStore` with this plugin's ``shared`` settings."""
        from .redis_store import RedisBucketStore

        return RedisBucketStore(redis, prefix, lease=self.settings.shared.lease_s)

    @proxy.hookimpl
    def proxy_startup(self, app: web.Application) -> None:
        """Placement passes over deployments another plugin knows are unusable (an open breaker);
        the stores kept across reloads are held by this configuration."""
        self._unavailable = app[proxy.HOOKS].unavailable
        if self._kept is not None and not self._acquired:
            self._acquired = True
            self._kept.acquire()

    @proxy.hookimpl
    def proxy_shutdown(self) -> Awaitable[None] | None:
        self.queue.close()
        if self._kept is None:
            return self.store.close()
        if not self._acquired:
            return None
        self._acquired = False
        return self._kept.release()  # the last generation out closes the shared store

    # -- admission ----------------------------------------------------------
    @proxy.hookimpl
    def proxy_admit(self, ctx: proxy.RequestContext) -> Awaitable[None] | None:
        """Take from every bucket the request needs, or queue / reject.

        Synchronous unless the request must wait or the store is remote: then it returns
        what to await, :class:`proxy.Deferred` unless it places the request on one of a
        model's deployments (that changes ``ctx.route``, which later plugins must see).
        """
        planner = self._planner
        if not planner.configured and ctx.principal.policy.rate_limit is None:
            return None
        candidates = Deployments.candidates(ctx.route)
        if len(candidates) > 1:
            return self._place(ctx, candidates)
        target = candidates[0] if candidates else None
        plan = planner.plan(ctx, target)
        if plan is None and target is None:
            return None
        waiting = self._admit_plan(ctx, plan or Plan((), (), 0, target))
        # One target: the route stays as it is, so the decision may come with the other plugins' (a
        # shared store's call goes out with theirs: one round trip for the request's admission).
        return proxy.Deferred(waiting) if waiting is not None else None

    # -- placement on a model's deployments ------------------------------------------
    def _place(self, ctx: proxy.RequestContext, candidates: Sequence[proxy.Target]) -> Awaitable[None] | None:
        """Admit on the preferred deployment with headroom, else queue on the soonest (:mod:`.placement`)."""
        assert self.deployments is not None
        # Passed over: what other plugins rule out (an open breaker) and deployments throttled by their
        # provider; whether one is full, the store's levels say below.
        ordered = self.deployments.order(candidates, lambda target: self._unavailable(ctx, target) not in (None, FULL))
        # A deployment nothing limits has an empty plan: it always has room.
        plans = [self._planner.plan(ctx, target) or Plan((), (), 0, target) for target in ordered]
        if not plans[0].claims:
            return self._admit_plan(ctx, plans[0])
        claims = peek_claims(plans)
        peeked = self.store.peek(claims, self.clock.monotonic())
        if isinstance(peeked, Grant):
            return self._admit_plan(ctx, plans[self._choose(ctx, plans, peeked, claims)])
        return self._place_later(ctx, plans, claims, peeked)

    async def _place_later(self, ctx: proxy.RequestContext, plans: list[Plan], claims: list[Claim],
                           pending: Awaitable[Grant]) -> None:
        peeked = await pending
        waiting = self._admit_plan(ctx, plans[self._choose(ctx, plans, peeked, claims)])
        if waiting is not None:
            await waiting

    def _choose(self, ctx: proxy.RequestContext, plans: list[Plan], peeked: Grant, claims: list[Claim]) -> int:
        return choose(plans, peeked, claims, self.queue.forecast, ctx.principal.policy.priority, self.queue.blocker)

    def _admit_plan(self, ctx: proxy.RequestContext, plan: Plan) -> Awaitable[None] | None:
        store = self.store
        if not plan.claims:
            self._placed(ctx, plan, store, "")
            return None
        now = self.clock.monotonic()
        blocker = self.queue.blocker(plan)
        if blocker is not None:  # earlier waiters are short on a bucket this one needs: get in line
            peeked = store.peek(plan.claims, now)
            if isinstance(peeked, Grant):
                return self._line_up(ctx, plan, blocker, peeked, now)
            return self._answered(peeked, ctx, plan, store, blocker)
        taken = store.take(plan.claims, now)
        if isinstance(taken, Grant):
            return self._decide(ctx, plan, store, taken, now)
        return self._answered(taken, ctx, plan, store, None)

    def _decide(self, ctx: proxy.RequestContext, plan: Plan, store: BucketStore, grant: Grant,
                now: float) -> Awaitable[None] | None:
        set_headers(ctx, plan, grant.levels)
        if grant.granted:
            self._admitted(ctx, plan, store, grant, now)
            return None
        spec = plan.specs[grant.blocking]
        if not self._queueing:
            wait = grant.wait if grant.wait < math.inf else self._forecast(ctx, plan, grant)[0]
            raise self._rejection(spec, spec.kind, wait)
        return self._queue_up(ctx, plan, spec, grant, now, refill=grant.wait)

    def _line_up(self, ctx: proxy.RequestContext, plan: Plan, blocker: Spec, peeked: Grant,
                 now: float) -> Awaitable[None]:
        set_headers(ctx, plan, peeked.levels)
        return self._queue_up(ctx, plan, blocker, peeked, now, refill=None)

    def _queue_up(self, ctx: proxy.RequestContext, plan: Plan, blocker: Spec, grant: Grant, now: float, *,
                  refill: float | None) -> Awaitable[None]:
        """Wait in the queue, or 429 at once when the predicted wait is past the maximum."""
        wait, i = self._forecast(ctx, plan, grant)
        if wait > self.queue.max_wait - SLACK:
            spec = plan.specs[i]
            raise self._rejection(spec, spec.kind, wait)
        return self.queue.enqueue(ctx, plan, blocker, now, wait=wait, refill=refill)

    def _forecast(self, ctx: proxy.RequestContext, plan: Plan, grant: Grant) -> tuple[float, int]:
        return self.queue.forecast.wait(plan.claims, grant.levels, ctx.principal.policy.priority)

    async def _answered(self, pending: Awaitable[Grant], ctx: proxy.RequestContext, plan: Plan,
                        store: BucketStore, blocker: Spec | None) -> None:
        """Admission once a remote store has answered (``blocker``: it asked to line up behind it).

        If the client leaves meanwhile, the store gives back what it granted (its contract).
        """
        grant = await pending
        now = self.clock.monotonic()
        if blocker is not None:
            waiting: Awaitable[None] | None = self._line_up(ctx, plan, blocker, grant, now)
        else:
            waiting = self._decide(ctx, plan, store, grant, now)
        if waiting is not None:
            await waiting

    def _give_back(self, plan: Plan, store: BucketStore, grant: Grant) -> None:
        """Return all that ``grant`` took (its request left before it could use it)."""
        self._settle(store, [(claim, claim.amount) for claim in plan.claims], grant.lease)

    def _admitted(self, ctx: proxy.RequestContext, plan: Plan, store: BucketStore, grant: Grant, now: float) -> None:
        self._placed(ctx, plan, store, grant.lease)
        self._m_admitted.inc()

    def _placed(self, ctx: proxy.RequestContext, plan: Plan, store: BucketStore, lease: str) -> None:
        """Remember the admission; a request placed on a deployment goes there first."""
        deployment = self.deployments.of(plan.target) if self.deployments and plan.target else None
        ctx.state[_STATE] = Admission(plan, store, lease, self.clock.monotonic(), deployment)
        if deployment is None or plan.target is None:
            return
        deployment.sent_at(time.perf_counter(), plan.reserved)
        taken = any(s.kind is CONCURRENCY and s.scope == "deployment" for s in plan.specs)
        self.inflight.placed(ctx, plan.target, deployment, store, lease, taken)  # type: ignore[union-attr]
        route, target = ctx.route, plan.target
        if route is not None and target is not None and route.targets[0] is not target:
            ctx.route = proxy.Route(route.name, (target, *(t for t in route.targets if t is not target)))

    def _admitted_from_queue(self, ctx: proxy.RequestContext, plan: Plan, store: BucketStore, grant: Grant) -> None:
        set_headers(ctx, plan, grant.levels)
        self._admitted(ctx, plan, store, grant, self.clock.monotonic())

    # -- settlement ---------------------------------------------------------
    @proxy.hookimpl
    def proxy_overloaded(self, ctx: proxy.RequestContext) -> str | None:
        """While requests wait for capacity, the gateway adds no optional load (no hedges)."""
        return "ratelimit queue" if len(self.queue) else None

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        """Release concurrency slots, settle the token reservation, wake the queue."""
        admission: Admission | None = ctx.state.pop(_STATE, None)
        if admission is None:
            return
        plan = admission.plan
        if admission.deployment is not None:
            plan = self.deployments.refresh(plan)  # type: ignore[union-attr]  # give back under the limits now
        now = self.clock.monotonic()
        reached = bool(ctx.attempts)
        used = ctx.usage.total_tokens if reached and ctx.usage is not None else 0
        placed = plan.target if admission.deployment is not None else None
        returns: list[Return] = []
        holds = False
        for spec, claim in zip(plan.specs, plan.claims):
            if spec.kind is CONCURRENCY:
                holds = True
                if spec.scope != "deployment":  # a deployment's slot follows the attempts (.inflight)
                    returns.append((claim, 1.0))
            elif spec.kind is TOKENS:
                spent = used_on(ctx, placed) if spec.scope == "deployment" else used
                if claim.amount != spent:
                    returns.append((claim, claim.amount - spent))  # refund, or charge the overrun
            elif not reached:
                returns.append((claim, claim.amount))
        if holds and reached:
            self.queue.forecast.held(plan.claims, now - admission.since)
        if placed is not None:
            returns += self.deployments.failover_charges(ctx, placed)  # type: ignore[union-attr]
        if returns:
            self._settle(admission.store, returns, admission.lease)
        if self.inflight is not None:
            self.inflight.finish(ctx)

    def _settle(self, store: BucketStore, returns: list[Return], lease: str) -> None:  # also .inflight's release
        """Give back to ``store``, then wake the queue (a remote store: once it has answered)."""
        settled = store.settle(returns, lease, self.clock.monotonic())
        if settled is None:
            self.queue.wake()
            return
        if len(self.queue):  # waiters here need what it gives back: it goes now, not with a later write
            store.hurry()
        # Nobody waits for it: the response is already sent.
        future = settled if isinstance(settled, asyncio.Future) else asyncio.ensure_future(settled)
        self._background.add(future)
        future.add_done_callback(self._settled)

    async def settled(self) -> None:
        """Wait for the settlements still on their way to a shared store (they may wait to share a write)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _settled(self, future: asyncio.Future[None]) -> None:
        self._background.discard(future)
        self.queue.wake()
        if not future.cancelled() and future.exception() is not None:  # the store logs its failures
            log.debug("rate limit: a settlement failed: %s", future.exception())

    def _rejection(self, spec: Spec, reason: str, wait: float) -> proxy.Rejection:
        return self._rejections(spec, reason, wait)

    # -- what upstreams say ---------------------------------------------------------
    @proxy.hookimpl
    def proxy_attempt_result(self, ctx: proxy.RequestContext, attempt: proxy.AttemptRecord) -> None:
        """A deployment answered: follow its provider's limits, adapt its concurrency; note a failed
        attempt (its slot goes back if the request moves on)."""
        if self.deployments is None:
            return
        caps, more_room = self.deployments.observe(attempt, self.clock.monotonic(),
                                                   follow_headers=self.settings.deployments.follow_headers)
        if caps:
            self._lower(caps)
        if attempt.error is not None and self.inflight is not None:
            self.inflight.failed(ctx, attempt.target)
        if more_room:
            self.queue.wake()  # waiters may go

    @proxy.hookimpl
    def proxy_unavailable(self, ctx: proxy.RequestContext, target: proxy.Target) -> str | None:
        """A deployment with no room for ``ctx`` (full, unless the request holds a slot there) or
        told by its provider's 429 to wait."""
        if self.inflight is None or target.deployment is None:
            return None
        return self.inflight.no_room(ctx, target, self.clock.monotonic())

    @proxy.hookimpl
    def proxy_attempt_started(self, ctx: proxy.RequestContext, attempt: proxy.AttemptRecord) -> None:
        """An attempt on a deployment the request holds no slot on (a failover, a retry, a hedge) takes one."""
        if self.inflight is not None and attempt.target.deployment is not None:
            self.inflight.started(ctx, self.store, attempt)

    def _lower(self, caps: list[Return]) -> None:
        lowered = self.store.lower(caps, self.clock.monotonic())
        if lowered is not None:
            future = asyncio.ensure_future(lowered)
            self._background.add(future)
            future.add_done_callback(self._background.discard)

    # -- forecasts and status --------------------------------------------------------
    @proxy.hookimpl
    def proxy_predicted_wait(self, ctx: proxy.RequestContext, route: proxy.Route) -> Awaitable[float] | float | None:
        """The wait of a request like ``ctx`` on ``route``'s soonest deployment, its key's own limits
        left out (the route's capacity, not the caller's quota)."""
        return predicted_wait(self._planner, self.store, self.queue, self.clock.monotonic(), ctx, route)

    @proxy.hookimpl
    async def proxy_status(self) -> dict[str, Any]:
        """Per route: queue length and the predicted wait of its last waiter; per deployment: limits
        in force, what is left, requests in flight."""
        return await status(self.deployments, self.store, self.queue, self.clock.monotonic(), self.settings.mode)
