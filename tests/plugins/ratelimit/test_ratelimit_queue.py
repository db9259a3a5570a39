"""The admission queue of ``mode: queue`` on a manual clock: waits, early refusals, deadlines, priority.

"At once" is ``run_now`` (the admission raises or returns before it could suspend);
time moves only when a test advances the clock, so every duration here is exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import proxy
from plugins.ratelimit import RateLimitPlugin
from plugins.ratelimit.store import Grant, MemoryBucketStore
from proxy.testing import PluginHarness


def no_waiter_timed_out(lim: Any) -> bool:
    return sum(lim.metric("floodgate_ratelimit_rejected_total", scope=s, reason="timeout")
               for s in ("global", "key", "model", "upstream")) == 0


async def test_a_wait_beyond_max_wait_is_refused_at_once(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 100},
                         "global": {"requests_per_second": 1, "burst": 1}})
    lim.admit_now(lim.request())
    refused = lim.refused_now(lim.request())  # the bucket needs 1 s, more than max_wait: no point queueing
    assert (refused.status, refused.code) == (429, "rate_limit_exceeded")
    assert refused.headers["retry-after-ms"] == "1000" and refused.headers["retry-after"] == "1"
    assert lim.metric("floodgate_ratelimit_rejected_total", scope="global", reason="requests") == 1
    assert len(lim.plugin.queue) == 0


async def test_requests_lining_up_behind_waiters_are_refused_at_once_when_too_many_are_ahead(limiter: Any) -> None:
    """The queue ahead counts: at 10/s with 0.55 s to wait, five may queue; the sixth is told at once."""
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 550},
                         "global": {"requests_per_second": 10, "burst": 1}})
    lim.admit_now(lim.request())
    queued = [lim.wait(lim.request()) for _ in range(5)]  # predicted waits 0.1, 0.2, ... 0.5 s
    await lim.h.settle()
    assert not any(t.done() for t in queued) and len(lim.plugin.queue) == 5
    refused = lim.refused_now(lim.request())  # behind five waiters: 0.6 s
    assert refused.headers["retry-after-ms"] == "600"
    assert "on requests per second: limit 10/s" in refused.message
    for n in range(1, 6):
        await lim.advance(0.1)
        assert [t.done() for t in queued] == [True] * n + [False] * (5 - n)
    await asyncio.gather(*queued)  # every one admitted, none refused at its deadline
    assert no_waiter_timed_out(lim)
    assert lim.metric("floodgate_ratelimit_queue_wait_seconds_count") == 5
    assert lim.metric("floodgate_ratelimit_queue_wait_seconds_sum") == pytest.approx(1.5)
    assert lim.metric("floodgate_ratelimit_admitted_total") == 6


async def test_under_4x_overload_refusals_come_at_once_and_no_waiter_times_out(limiter: Any) -> None:
    """Issue 7: 40 req/s offered to 10 req/s for 3 s. Every refusal is decided on arrival; every
    request that queues is admitted within max_wait."""
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 1000},
                         "global": {"requests_per_second": 10, "burst": 5}})
    queued: list[asyncio.Task[None]] = []
    refused_at_once = admitted_at_once = 0
    for _ in range(120):
        task = lim.wait(lim.request())
        await lim.h.settle()  # no time passes: whatever is decided now is decided on arrival
        if not task.done():
            queued.append(task)
        elif task.exception() is not None:
            assert isinstance(task.exception(), proxy.Rejection)
            refused_at_once += 1
        else:
            admitted_at_once += 1
        await lim.advance(0.025)
    await lim.advance(1.0)
    assert all(t.done() and t.exception() is None for t in queued)
    assert no_waiter_timed_out(lim)
    admitted = admitted_at_once + len(queued)
    # The burst of 5, then 10/s over the 3 s of arrivals and the last second of the queue draining.
    assert 5 + 10 * 3 <= admitted <= 5 + 10 * 4
    assert refused_at_once == 120 - admitted
    assert lim.metric("floodgate_ratelimit_queue_wait_seconds_bucket", le="1.0") == len(queued)


async def test_priority_decides_who_waits_less(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 3000}, "upstreams": {"main": {"max_concurrent": 1}}})
    first = lim.admit_now(lim.request())
    low = lim.request(lim.key("low", priority=0))
    high = lim.request(lim.key("high", priority=10))
    low_task = lim.wait(low)
    await lim.h.settle()
    high_task = lim.wait(high)  # queued after "low", served before it
    await lim.h.settle()
    await lim.finish(first)
    assert high_task.done() and not low_task.done()
    await lim.finish(high)
    assert low_task.done()


async def test_priority_shortens_the_predicted_wait(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 350},
                         "global": {"requests_per_second": 10, "burst": 1}})
    lim.admit_now(lim.request())
    low = [lim.wait(lim.request(lim.key("low"))) for _ in range(3)]  # 0.1, 0.2, 0.3 s
    await lim.h.settle()
    lim.refused_now(lim.request(lim.key("low")))  # 0.4 s behind them
    vip = lim.wait(lim.request(lim.key("vip", priority=10)))  # nobody ahead of it: 0.1 s
    await lim.advance(0.1)
    assert vip.done() and vip.exception() is None and not any(t.done() for t in low)
    # The others were pushed back by one slot: the last one is now due after its deadline.
    await lim.advance(0.3)
    assert [t.done() for t in low] == [True, True, True]
    assert [t.exception() is None for t in low] == [True, True, False]


async def test_a_concurrency_wait_is_predicted_from_how_long_slots_are_held(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 600}, "per_key": {"max_concurrent": 2}})
    for _ in range(2):  # two requests held their slot 1 s each
        a, b = lim.admit_now(lim.request()), lim.admit_now(lim.request())
        await lim.advance(1.0)
        await lim.finish(a)
        await lim.finish(b)
    held = [lim.admit_now(lim.request()), lim.admit_now(lim.request())]
    # Two slots, each held about 1 s: one comes back every 0.5 s. The first in line may wait...
    waiting = lim.wait(lim.request())
    await lim.h.settle()
    assert not waiting.done()
    # ...the second would need two slots back, 1 s: refused at once.
    refused = lim.refused_now(lim.request())
    assert "Too many concurrent requests for key 'anonymous': limit 2" in refused.message
    assert refused.headers["retry-after-ms"] == "1000"
    assert lim.metric("floodgate_ratelimit_rejected_total", scope="key", reason="concurrency") == 1
    await lim.finish(held[0])
    assert waiting.done() and waiting.exception() is None


async def test_a_waiter_not_admitted_within_max_wait_gets_429(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 200}, "per_key": {"max_concurrent": 1}})
    first = lim.admit_now(lim.request())
    second = lim.request()
    task = lim.wait(second)  # no request has ended yet: its wait is unknown, so it queues
    await lim.advance(0.1)
    assert not task.done()
    await lim.advance(0.1)
    assert task.done()
    rejection = task.exception()
    assert isinstance(rejection, proxy.Rejection) and rejection.status == 429
    assert "not admitted within 200 ms" in rejection.message
    assert "x-ratelimit-limit-requests" not in second.response_headers  # no request-rate limit here
    assert lim.metric("floodgate_ratelimit_rejected_total", scope="key", reason="timeout") == 1
    assert lim.metric("floodgate_ratelimit_queue_length") == 0
    assert lim.metric("floodgate_ratelimit_queue_wait_seconds_sum") == pytest.approx(0.2)
    await lim.finish(first)
    lim.admit_now(lim.request())  # the slot came back; the refused waiter took nothing


async def test_a_full_queue_refuses_at_once(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 3000, "max_length": 2},
                         "upstreams": {"main": {"max_concurrent": 1}}})
    first = lim.admit_now(lim.request())
    waiting = [lim.wait(lim.request()) for _ in range(2)]
    await lim.h.settle()
    refused = lim.refused_now(lim.request())
    assert "queue is full" in refused.message and refused.headers["retry-after"] == "1"
    assert lim.metric("floodgate_ratelimit_rejected_total", scope="upstream", reason="queue_full") == 1
    await lim.finish(first)
    assert waiting[0].done() and not waiting[1].done()


async def test_the_queue_absorbs_a_burst_at_the_refill_rate(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 1000},
                         "global": {"requests_per_second": 20, "burst": 5}})
    tasks = [lim.wait(lim.request()) for _ in range(15)]
    await lim.h.settle()
    assert sum(t.done() for t in tasks) == 5  # the burst
    for n in range(1, 11):
        await lim.advance(0.05)
        assert sum(t.done() for t in tasks) == 5 + n  # then one every 50 ms, in order
    assert lim.metric("floodgate_ratelimit_queue_wait_seconds_count") == 10
    assert lim.metric("floodgate_ratelimit_queue_wait_seconds_sum") == pytest.approx(2.75)  # 0.05 + ... + 0.5
    assert lim.metric("floodgate_ratelimit_queue_length") == 0
    assert lim.metric("floodgate_ratelimit_admitted_total") == 15
    assert lim.clock.pending == 0  # no timer left behind


async def test_reject_mode_admits_exactly_the_burst_plus_the_refill(limiter: Any) -> None:
    """50 req/s with burst 10, offered 200 req/s for 2 s (400 requests, the last at 1.995 s): the burst
    plus 99 refilled tokens admitted, the rest refused at once."""
    lim = await limiter({"mode": "reject", "global": {"requests_per_second": 50, "burst": 10}})
    admitted = 0
    for _ in range(400):
        ctx = lim.request()
        try:
            lim.admit_now(ctx)
            admitted += 1
            await lim.finish(ctx)
        except proxy.Rejection as rejection:
            assert rejection.status == 429
        await lim.advance(0.005)
    assert admitted == 10 + 99
    assert lim.metric("floodgate_ratelimit_admitted_total") == admitted


async def test_a_saturated_key_does_not_hold_up_others(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 3000}, "global": {"requests_per_second": 1000}})
    alice = lim.key("alice", requests_per_second=2, burst=1)
    lim.admit_now(lim.request(alice))
    later = lim.request(alice)
    queued = lim.wait(later)  # alice's bucket refills in 0.5 s
    await lim.h.settle()
    lim.admit_now(lim.request(lim.key("bob")))  # not behind alice
    await lim.advance(0.5)
    assert queued.done() and later.response_headers["x-ratelimit-limit-requests"] == "1"


async def test_a_client_leaving_the_queue_consumes_nothing(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 3000},
                         "global": {"requests_per_second": 2, "burst": 1}})
    lim.admit_now(lim.request())  # the next token is due 0.5 s later
    leaving = lim.wait(lim.request())
    await lim.h.settle()
    leaving.cancel()
    await lim.h.settle()
    assert len(lim.plugin.queue) == 0
    await lim.advance(0.5)
    lim.admit_now(lim.request())  # the departed waiter did not take the token due at 0.5 s
    assert lim.metric("floodgate_ratelimit_queue_wait_seconds_count") == 1
    assert lim.metric("floodgate_ratelimit_admitted_total") == 2


async def test_a_waiter_admitted_as_its_client_leaves_gives_everything_back(limiter: Any) -> None:
    """The race: the queue admits a waiter whose task is being cancelled."""
    lim = await limiter({"mode": "queue", "global": {"requests_per_second": 1, "burst": 1,
                                                     "tokens_per_minute": 600}})
    lim.admit_now(lim.request(max_tokens=10))
    second = lim.request(max_tokens=10)
    task = lim.wait(second)
    await lim.h.settle()
    lim.clock.advance(1.0)  # the timer fires: the queue admits it (its tokens are taken) ...
    task.cancel()  # ... and its client leaves before the waiter runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "ratelimit.admission" in second.state  # it was admitted: proxy_finished settles it
    await lim.finish(second, reached=False)  # the core runs it for every request; no attempt was made
    requests, tokens = lim.levels("global:-:requests", "global:-:tokens")
    assert requests == 1.0  # the request token came back
    assert tokens == 600 - (lim.HI_ESTIMATE + 10) + 10.0  # only the first's reservation, and 1 s of refill
    assert len(lim.plugin.queue) == 0


class LaterStore:
    """Memory buckets answered after a loop iteration, as a remote store answers (the queue's
    asynchronous path on a manual clock); ``failing`` makes every call raise."""

    shared = True

    def __init__(self) -> None:
        self.memory = MemoryBucketStore()
        self.failing = False
        self.calls = 0

    async def _answer(self) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.failing:
            raise ConnectionError("store unreachable")

    async def take(self, claims: Any, now: float) -> Grant:
        await self._answer()
        return self.memory.take(claims, now)

    async def peek(self, claims: Any, now: float) -> Grant:
        await self._answer()
        return self.memory.peek(claims, now)

    async def settle(self, returns: Any, lease: str, now: float) -> None:
        await self._answer()
        self.memory.settle(returns, lease, now)

    def hurry(self) -> None:
        return None

    def close(self) -> None:
        return None


async def test_a_store_answering_later_keeps_the_queue_order(limiter: Any) -> None:
    store = LaterStore()
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 5000},
                         "global": {"requests_per_second": 10, "burst": 1}}, store=store)
    first = lim.wait(lim.request())
    waiters = [lim.wait(lim.request(lim.key(f"k{n}", priority=n % 2))) for n in range(4)]
    await lim.h.settle()
    assert first.done() and len(lim.plugin.queue) == 4
    order: list[int] = []
    for _ in range(4):
        await lim.advance(0.1)
        order += [n for n, t in enumerate(waiters) if t.done() and n not in order]
    assert order == [1, 3, 0, 2]  # priority 1 first, then arrival
    assert no_waiter_timed_out(lim)


async def test_a_failing_store_leaves_waiters_to_their_deadlines(limiter: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    store = LaterStore()
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 1000}, "shared": {"recheck_ms": 100},
                         "global": {"requests_per_second": 2, "burst": 1}}, store=store)

    async def one_admitted_one_queued() -> asyncio.Task[None]:
        admitted = lim.wait(lim.request())
        await lim.h.settle()
        queued = lim.wait(lim.request())  # due 0.5 s later
        await lim.h.settle()
        assert admitted.done() and not queued.done()
        return queued

    doomed = await one_admitted_one_queued()
    store.failing = True
    for _ in range(9):
        await lim.advance(0.1)  # the scan at 0.5 s fails, and the re-checks every 100 ms after it
    assert not doomed.done()
    assert sum("bucket store failed" in r.message for r in caplog.records) == 1  # said once, not per scan
    await lim.advance(0.1)
    assert isinstance(doomed.exception(), proxy.Rejection)  # refused at its deadline, not hung

    store.failing = False
    recovering = await one_admitted_one_queued()
    store.failing = True
    await lim.advance(0.5)  # its scan fails...
    assert not recovering.done()
    store.failing = False
    await lim.advance(0.1)  # ...the next re-check admits it
    assert recovering.done() and recovering.exception() is None


async def test_the_queue_tells_the_gateway_it_is_holding_load_back() -> None:
    clock = proxy.ManualClock()
    plugin = RateLimitPlugin(clock=clock)
    async with PluginHarness(plugin, clock=clock, settings={"ratelimit": {
            "global": {"requests_per_second": 1, "burst": 1}, "queue": {"max_wait_ms": 5000}}}) as h:
        assert plugin.proxy_overloaded(h.context()) is None
        h.admit_now(h.context())
        waiting = h.spawn(h.admit(h.context()))
        await h.settle()
        assert plugin.proxy_overloaded(h.context()) == "ratelimit queue"  # no hedging into an overload
        await h.advance(1.0)
        assert waiting.done() and plugin.proxy_overloaded(h.context()) is None
