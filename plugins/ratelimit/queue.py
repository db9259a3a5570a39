"""The fair priority queue of ``mode: queue``: requests waiting for a bucket.

One queue for every waiting request, ordered by (-priority, arrival). Waiting is
event driven: one timer for the whole queue, set to when the first blocked
waiter's buckets will have refilled (deficit / rate), plus a wake-up whenever a
request ends and gives something back. Waiters only queue behind earlier
waiters blocked on a bucket they also need, so one saturated key does not stall
the others.

The queue takes from the store; what an admission or a refusal means for the
request (headers, metrics, the 429) is the plugin's, passed in as callbacks.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram

import proxy

from .settings import QueueSettings
from .store import BucketStore

if TYPE_CHECKING:  # plugin.py imports this module
    from .plugin import Plan, Spec

__all__ = ["QUEUE_FULL", "TIMEOUT", "AdmissionQueue"]

#: Reasons of a refusal by the queue (the ``reason`` label of the rejection metric).
QUEUE_FULL, TIMEOUT = "queue_full", "timeout"
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: ``admit(ctx, plan, levels)``: the request got its buckets (``levels`` after the take).
Admit = Callable[[proxy.RequestContext, "Plan", tuple[float, ...]], None]
#: ``reject(spec, reason, wait)``: the 429 for a request short on ``spec``.
Reject = Callable[["Spec", str, float], proxy.Rejection]


class _Waiter:
    __slots__ = ("blocker", "ctx", "deadline", "enqueued", "future", "order", "plan", "queued")

    def __init__(self, order: tuple[float, int], ctx: proxy.RequestContext, plan: Plan,
                 future: asyncio.Future[None], now: float, deadline: float, blocker: Spec) -> None:
        self.order = order
        self.ctx = ctx
        self.plan = plan
        self.future = future
        self.enqueued = now
        self.deadline = deadline
        self.blocker = blocker  # the bucket it waits for (for the timeout's labels)
        self.queued = True

    def __lt__(self, other: _Waiter) -> bool:
        return self.order < other.order


class AdmissionQueue:
    """Requests waiting for buckets of ``store``; admitted in queue order by :meth:`scan`."""

    def __init__(self, store: BucketStore, *, admit: Admit, reject: Reject) -> None:
        self.store = store
        self._admit = admit
        self._reject = reject
        self.max_wait = 2.0
        self.max_length = 1000
        self._waiters: list[_Waiter] = []
        self._blocked: dict[str, Spec] = {}  # bucket key -> spec a queued waiter is short on
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    def configure(self, settings: QueueSettings, registry: CollectorRegistry) -> None:
        self.max_wait = settings.max_wait_ms / 1000.0
        self.max_length = settings.max_length
        self._m_wait = Histogram("floodgate_ratelimit_queue_wait_seconds", "Time requests spent in the "
                                 "rate-limit queue (admitted, timed out or disconnected)",
                                 buckets=WAIT_BUCKETS, registry=registry)
        self._m_queue = Gauge("floodgate_ratelimit_queue_length", "Requests waiting in the rate-limit queue",
                              registry=registry)

    def bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        """The event loop's clock, which the store and the timer share."""
        return (self._loop or self.bind_loop()).time()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def blocker(self, plan: Plan) -> Spec | None:
        """A bucket ``plan`` needs that an earlier waiter is short on (the request must get in line)."""
        if not self._waiters:
            return None
        return next((s for s in plan.specs if s.key in self._blocked), None)

    def enqueue(self, ctx: proxy.RequestContext, plan: Plan, blocker: Spec, now: float, *,
                refill: float | None = None) -> Awaitable[None]:
        """Park a request until :meth:`scan` admits it or ``max_wait`` has passed.

        :param blocker: the bucket it waits for.
        :param refill: seconds until ``blocker`` has what the request needs, when the
            request itself found it short; ``None`` when it lines up behind earlier
            waiters short on ``blocker`` (their timer is set).
        """
        queue = self._waiters
        if len(queue) >= self.max_length:
            raise self._reject(blocker, QUEUE_FULL, self.store.peek(plan.claims, now).wait)
        priority = ctx.principal.policy.priority
        assert self._loop is not None
        waiter = _Waiter((-priority, next(self._seq)), ctx, plan, self._loop.create_future(), now,
                         now + self.max_wait, blocker)
        bisect.insort(queue, waiter)
        self._m_queue.set(len(queue))
        if refill is not None:
            self._blocked[blocker.key] = blocker
            if math.isfinite(refill):
                self._schedule(now + refill)
        return self._wait(waiter)

    def wake(self, now: float) -> None:
        """Something was given back: let the waiters try now."""
        if self._waiters:
            self._schedule(now)

    async def _wait(self, waiter: _Waiter) -> None:
        future = waiter.future
        try:
            async with asyncio.timeout_at(waiter.deadline):
                await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return  # admitted at the deadline
            self._leave(waiter)
            assert self._loop is not None
            wait = self.store.peek(waiter.plan.claims, self._loop.time()).wait
            raise self._reject(waiter.blocker, TIMEOUT, wait) from None
        except asyncio.CancelledError:
            # The client left. If it was admitted in the same instant, proxy_finished
            # gives everything back (no attempt was made); otherwise it just leaves.
            if not future.done() or future.cancelled():
                self._leave(waiter)
            raise

    def _leave(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        self._waiters.remove(waiter)
        assert self._loop is not None
        now = self._loop.time()
        self._m_wait.observe(now - waiter.enqueued)
        self._m_queue.set(len(self._waiters))
        if self._waiters:
            self._schedule(now)  # it may have been the one holding the others back
        else:
            self._blocked.clear()

    def _schedule(self, when: float) -> None:
        """Run :meth:`scan` at ``when`` unless it is already due earlier."""
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_at(when, self.scan)

    def scan(self) -> None:
        """Admit waiters in queue order; note which buckets hold the rest back."""
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        queue, store = self._waiters, self.store
        blocked: dict[str, Spec] = {}
        soonest = math.inf
        i = 0
        while i < len(queue):
            waiter = queue[i]
            if waiter.future.done() or any(s.key in blocked for s in waiter.plan.specs):
                # Cancelled (its task will remove it), or FIFO per bucket: an earlier waiter is short on one it needs.
                i += 1
                continue
            grant = store.take(waiter.plan.claims, now)
            if grant.granted:
                del queue[i]
                waiter.queued = False
                self._m_wait.observe(now - waiter.enqueued)
                self._admit(waiter.ctx, waiter.plan, grant.levels)
                waiter.future.set_result(None)
                continue
            spec = waiter.plan.specs[grant.blocking]
            waiter.blocker = spec
            blocked[spec.key] = spec
            soonest = min(soonest, grant.wait)
            if spec.scope == "global":
                break  # every request needs the global buckets: nobody behind can go
            i += 1
        self._blocked = blocked if queue else {}
        self._m_queue.set(len(queue))
        if math.isfinite(soonest):
            self._schedule(now + soonest)
