"""The ``ratelimit`` plugin: admission against the buckets, settlement when a request ends."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import CollectorRegistry, Counter

import proxy

from .plan import CONCURRENCY, TOKENS, Plan, Planner, Spec
from .queue import AdmissionQueue
from .responses import Rejections, set_headers
from .settings import RateLimitSettings
from .store import BucketStore, Grant, MemoryBucketStore, Return

if TYPE_CHECKING:
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


class RateLimitPlugin:
    """Token buckets for requests, tokens and concurrency; queue or reject when empty.

    :param store: where the buckets live (default: this process's memory).
    :param clock: time for the buckets, the queue's timers and its deadlines.
    """

    name = "ratelimit"

    def __init__(self, store: BucketStore | None = None, *, clock: proxy.Clock | None = None) -> None:
        self.clock: proxy.Clock = clock if clock is not None else proxy.LoopClock()
        self.store: BucketStore = store if store is not None else MemoryBucketStore()
        self.settings = RateLimitSettings()
        self._queueing = True
        self._rejections = Rejections(self.settings.queue, CollectorRegistry())
        self._planner = Planner(self.settings, None, self._rejections.too_large)
        self._m_admitted = Counter("floodgate_ratelimit_admitted", "", registry=CollectorRegistry())
        self._background: set[asyncio.Future[None]] = set()
        self.queue = AdmissionQueue(self.clock, self.store, admit=self._admitted_from_queue,
                                    reject=self._rejection, give_back=self._give_back)

    # -- configuration ------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        settings = config.plugin_settings(self.name, RateLimitSettings)
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
        self._planner = Planner(settings, next(iter(config.upstreams), None), self._rejections.too_large,
                                config.catalogue_name)
        self._m_admitted = Counter("floodgate_ratelimit_admitted", "Requests admitted by the rate limiter",
                                   registry=registry)
        self.queue.configure(settings.queue, settings.shared.recheck_ms, registry)

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
    def proxy_shutdown(self) -> Awaitable[None] | None:
        self.queue.close()
        return self.store.close()

    # -- admission ----------------------------------------------------------
    @proxy.hookimpl
    def proxy_admit(self, ctx: proxy.RequestContext) -> Awaitable[None] | None:
        """Take from every bucket the request needs, or queue / reject.

        Synchronous unless the request must wait or the store is remote: then it
        returns the coroutine (the core awaits what is awaitable).
        """
        planner = self._planner
        if not planner.configured and ctx.principal.policy.rate_limit is None:
            return None
        plan = planner.plan(ctx)
        if plan is None:
            return None
        store = self.store
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
        ctx.state[_STATE] = Admission(plan, store, grant.lease, now)
        self._m_admitted.inc()

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
        now = self.clock.monotonic()
        reached = bool(ctx.attempts)
        used = ctx.usage.total_tokens if reached and ctx.usage is not None else 0
        returns: list[Return] = []
        holds = False
        for spec, claim in zip(plan.specs, plan.claims):
            if spec.kind is CONCURRENCY:
                returns.append((claim, 1.0))
                holds = True
            elif spec.kind is TOKENS:
                if claim.amount != used:
                    returns.append((claim, claim.amount - used))  # refund, or charge the overrun
            elif not reached:
                returns.append((claim, claim.amount))
        if holds and reached:
            self.queue.forecast.held(plan.claims, now - admission.since)
        if returns:
            self._settle(admission.store, returns, admission.lease)

    def _settle(self, store: BucketStore, returns: list[Return], lease: str) -> None:
        """Give back to ``store``, then wake the queue (a remote store: once it has answered)."""
        settled = store.settle(returns, lease, self.clock.monotonic())
        if settled is None:
            self.queue.wake()
            return
        future = asyncio.ensure_future(settled)  # nobody waits for it: the response is already sent
        self._background.add(future)
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future[None]) -> None:
        self._background.discard(future)
        self.queue.wake()
        if not future.cancelled() and future.exception() is not None:  # the store logs its failures
            log.debug("rate limit: a settlement failed: %s", future.exception())

    def _rejection(self, spec: Spec, reason: str, wait: float) -> proxy.Rejection:
        return self._rejections(spec, reason, wait)
