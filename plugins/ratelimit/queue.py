"""The fair priority queue of ``mode: queue``: requests waiting for a bucket.

One queue for every waiting request of this process, ordered by (-priority,
arrival). Waiting is event driven, on the plugin's clock: one timer for the
whole queue, set to when the first blocked waiter's buckets will have refilled
(deficit / rate), plus a wake-up whenever a request of this process ends and
gives something back. With a shared store other processes give back too, so a
waiter short of a concurrency slot re-checks every ``recheck`` seconds. Waiters
only queue behind earlier waiters blocked on a bucket they also need, so one
saturated key does not stall the others. Each waiter has its own deadline timer.

A scan asks the store for each waiter in turn. It runs synchronously while the
store answers synchronously (memory) and continues as a task once it must wait
for one (Redis): the queue's order is kept either way, and one scan runs at a time.

The queue takes from the store; what an admission or a refusal means for the
request (headers, metrics, the 429) is the plugin's, passed in as callbacks.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge, Histogram

import proxy

from .forecast import Forecast
from .plan import Plan, Spec
from .responses import QUEUE_FULL, TIMEOUT
from .settings import QueueSettings
from .store import BucketStore, Claim, Grant

__all__ = ["AdmissionQueue"]

log = logging.getLogger("floodgate.ratelimit")

WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: ``admit(ctx, plan, store, grant)``: the request got its buckets from ``store``.
Admit = Callable[[proxy.RequestContext, Plan, BucketStore, Grant], None]
#: ``reject(spec, reason, wait)``: the 429 for a request short on ``spec``.
Reject = Callable[[Spec, str, float], proxy.Rejection]
#: ``give_back(plan, store, grant)``: return what ``grant`` took (its request left meanwhile).
GiveBack = Callable[[Plan, BucketStore, Grant], None]


class _Timer(Protocol):  # what proxy.Clock.call_at returns
    def cancel(self) -> None: ...

    def when(self) -> float: ...


class _Waiter:
    __slots__ = ("blocker", "ctx", "due", "enqueued", "future", "order", "plan", "priority", "queued", "timer")

    def __init__(self, ctx: proxy.RequestContext, plan: Plan, future: asyncio.Future[bool], order: tuple[int, int],
                 now: float, due: float, blocker: Spec) -> None:
        self.ctx = ctx
        self.plan = plan
        self.future = future  # True: admitted; False: its deadline passed
        self.order = order
        self.priority = -order[0]
        self.enqueued = now
        self.due = due  # when its buckets are expected to have enough (for retry-after)
        self.blocker = blocker  # the bucket it waits for (for the 429's labels and message)
        self.queued = True
        self.timer: _Timer | None = None

    def __lt__(self, other: _Waiter) -> bool:
        return self.order < other.order


class AdmissionQueue:
    """Requests waiting for buckets of ``store``; admitted in queue order by a scan."""

    def __init__(self, clock: proxy.Clock, store: BucketStore, *, admit: Admit, reject: Reject,
                 give_back: GiveBack) -> None:
        self.clock = clock
        self.store = store
        self._admit = admit
        self._reject = reject
        self._give_back = give_back
        self.max_wait = 2.0
        self.max_length = 1000
        self.recheck = 0.05
        self.forecast = Forecast()
        self._waiters: list[_Waiter] = []
        self._blocked: dict[str, Spec] = {}  # bucket key -> spec a queued waiter is short on
        self._seq = itertools.count()
        self._timer: _Timer | None = None
        self._soon = False  # a scan is due in this loop iteration
        self._scanning: asyncio.Task[None] | None = None  # a scan waiting for the store
        self._again = False  # something happened during that scan: scan once more after it
        self._failing = False
        self._m_wait: Histogram | None = None
        self._m_queue: Gauge | None = None
        #: A waiter's plan with the limits in force now (the plugin's; adaptive limits change).
        self.refresh: Callable[[Plan], Plan] = lambda plan: plan

    def __len__(self) -> int:
        return len(self._waiters)

    def configure(self, settings: QueueSettings, recheck_ms: float, registry: CollectorRegistry) -> None:
        self.max_wait = settings.max_wait_ms / 1000.0
        self.max_length = settings.max_length
        self.recheck = recheck_ms / 1000.0
        self._m_wait = Histogram("floodgate_ratelimit_queue_wait_seconds", "Time requests spent in the "
                                 "rate-limit queue (admitted, timed out or disconnected)",
                                 buckets=WAIT_BUCKETS, registry=registry)
        self._m_queue = Gauge("floodgate_ratelimit_queue_length", "Requests waiting in the rate-limit queue",
                              registry=registry, multiprocess_mode="livesum")  # workers' queues add up

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._scanning is not None:
            self._scanning.cancel()

    def blocker(self, plan: Plan) -> Spec | None:
        """A bucket ``plan`` needs that an earlier waiter is short on (the request must get in line)."""
        if not self._waiters:
            return None
        return next((s for s in plan.specs if s.key in self._blocked), None)

    def by_route(self, now: float) -> dict[str, tuple[int, float]]:
        """Waiters per route, and the predicted wait of each route's last (when it expects to go)."""
        out: dict[str, tuple[int, float]] = {}
        for waiter in self._waiters:
            route = waiter.ctx.route
            name = route.name if route is not None else "-"
            count, wait = out.get(name, (0, 0.0))
            due = waiter.due - now
            out[name] = (count + 1, max(wait, due) if due < math.inf else wait)
        return out

    def enqueue(self, ctx: proxy.RequestContext, plan: Plan, blocker: Spec, now: float, *, wait: float,
                refill: float | None = None) -> Awaitable[None]:
        """Park a request until a scan admits it or ``max_wait`` has passed.

        :param blocker: the bucket it waits for.
        :param wait: its predicted wait (``retry-after`` should it be refused).
        :param refill: seconds until ``blocker`` has what the request needs, when the
            request itself found it short (``inf``: a slot must come back); ``None``
            when it lines up behind earlier waiters short on ``blocker`` (their timer is set).
        """
        queue = self._waiters
        if len(queue) >= self.max_length:
            raise self._reject(blocker, QUEUE_FULL, wait)
        priority = ctx.principal.policy.priority
        waiter = _Waiter(ctx, plan, asyncio.get_running_loop().create_future(), (-priority, next(self._seq)),
                         now, now + wait, blocker)
        waiter.timer = self.clock.call_at(now + self.max_wait, functools.partial(self._expire, waiter))
        bisect.insort(queue, waiter)
        self.forecast.add(plan.claims, priority)
        self._gauge()
        if refill is not None:
            self._blocked[blocker.key] = blocker
            delay = self._retry_in(refill)
            if delay < math.inf:
                self._schedule(now + delay)
        return self._wait(waiter)

    def wake(self) -> None:
        """Something was given back: let the waiters try (once per loop iteration)."""
        if self._waiters and not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self._scan_soon)

    # -- one waiter -------------------------------------------------------------------
    async def _wait(self, waiter: _Waiter) -> None:
        future = waiter.future
        try:
            admitted = await future
        except asyncio.CancelledError:
            # The client left. If it was admitted in the same instant, proxy_finished
            # gives everything back (no attempt was made); otherwise it just leaves.
            if not (future.done() and not future.cancelled() and future.result()):
                self._leave(waiter)
            raise
        if admitted:
            return
        self._leave(waiter)
        raise self._reject(waiter.blocker, TIMEOUT, max(0.0, waiter.due - self.clock.monotonic()))

    def _expire(self, waiter: _Waiter) -> None:
        if not waiter.future.done():
            waiter.future.set_result(False)

    def _leave(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        self._dequeue(waiter)
        self._waiters.remove(waiter)
        self._gauge()
        if not self._waiters:
            self._blocked.clear()
        elif waiter.blocker.key in self._blocked:
            self.wake()  # it may have been the one holding the others back

    def _dequeue(self, waiter: _Waiter) -> None:
        waiter.queued = False
        if waiter.timer is not None:
            waiter.timer.cancel()
        self.forecast.remove(waiter.plan.claims, waiter.priority)
        if self._m_wait is not None:
            self._m_wait.observe(self.clock.monotonic() - waiter.enqueued)

    # -- scans ----------------------------------------------------------------------
    def _retry_in(self, wait: float) -> float:
        """When to look again at a bucket short for ``wait`` seconds (``inf``: a slot must come back)."""
        if wait < math.inf:
            return wait
        return self.recheck if self.store.shared else math.inf  # others' give-backs do not wake us

    def _schedule(self, when: float) -> None:
        """Scan at ``when`` unless a scan is already due earlier."""
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = self.clock.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.scan()

    def _scan_soon(self) -> None:
        self._soon = False
        self.scan()

    def scan(self) -> None:
        """Admit waiters in queue order; note which buckets hold the rest back."""
        if self._scanning is not None:
            self._again = True
            return
        store = self.store  # one store for the whole scan, even if the plugin switches meanwhile
        steps = self._steps(store)
        try:
            claims = next(steps)
            while True:
                result = store.take(claims, self.clock.monotonic())
                if not isinstance(result, Grant):
                    self._scanning = asyncio.get_running_loop().create_task(self._scan_async(store, steps, result))
                    return
                claims = steps.send(result)
        except StopIteration:
            pass
        except proxy.Rejection:  # the shared state is unavailable under on_error: reject: look again later
            steps.close()
            self._schedule(self.clock.monotonic() + self.recheck)

    async def _scan_async(self, store: BucketStore, steps: Generator[Sequence[Claim], Grant, None],
                          pending: Awaitable[Grant]) -> None:
        """The rest of a scan whose store answers after a round trip."""
        try:
            grant = await pending
            while True:
                claims = steps.send(grant)
                result = store.take(claims, self.clock.monotonic())
                grant = result if isinstance(result, Grant) else await result
        except StopIteration:
            self._failing = False
        except Exception as exc:  # the store is unreachable: waiters keep their deadlines; try again later
            steps.close()
            if not self._failing:
                self._failing = True
                log.warning("rate-limit queue: the bucket store failed (%s); retrying every %gs", exc, self.recheck)
            self._schedule(self.clock.monotonic() + self.recheck)
        finally:
            self._scanning = None
        if self._again:
            self._again = False
            self.scan()

    def _steps(self, store: BucketStore) -> Generator[Sequence[Claim], Grant, None]:
        """The scan's decisions: yields the claims of the next waiter to try, receives ``store``'s grant."""
        blocked: dict[str, Spec] = {}
        soonest = math.inf
        admitted = False
        now = self.clock.monotonic()
        for waiter in list(self._waiters):
            if not waiter.queued or waiter.future.done() or any(s.key in blocked for s in waiter.plan.specs):
                # Leaving (its task removes it), or FIFO per bucket: an earlier waiter is short on one it needs.
                continue
            waiter.plan = self.refresh(waiter.plan)  # limits may have changed while it waited
            grant = yield waiter.plan.claims
            now = self.clock.monotonic()
            if not waiter.queued or waiter.future.done():  # it left while the store answered
                if grant.granted:
                    self._give_back(waiter.plan, store, grant)
                continue
            if grant.granted:
                self._dequeue(waiter)
                admitted = True
                self._admit(waiter.ctx, waiter.plan, store, grant)
                waiter.future.set_result(True)
                continue
            spec = waiter.plan.specs[grant.blocking]
            waiter.blocker = spec
            if grant.wait < math.inf:  # a slot's return is unknown: keep the forecast it queued with
                waiter.due = now + grant.wait
            blocked[spec.key] = spec
            soonest = min(soonest, self._retry_in(grant.wait))
            if spec.scope == "global":
                break  # every request needs the global buckets: nobody behind can go
        if admitted:
            self._waiters = [w for w in self._waiters if w.queued]
        self._blocked = blocked if self._waiters else {}
        self._gauge()
        if soonest < math.inf:
            self._schedule(now + soonest)

    def _gauge(self) -> None:
        if self._m_queue is not None:
            self._m_queue.set(len(self._waiters))
