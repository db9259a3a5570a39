"""The offline plugin harness: hooks driven without sockets, time moved by the test."""

from __future__ import annotations

import asyncio

import pytest

import proxy
from proxy.testing import PluginHarness, run_now


class Spacing:
    """Admits one request per second; a second one waits for the next slot (at most 2 s)."""

    name = "spacing"

    def __init__(self, clock: proxy.Clock) -> None:
        self.clock = clock
        self.next_free = 0.0

    @proxy.hookimpl
    def proxy_admit(self, ctx: proxy.RequestContext):
        now = self.clock.monotonic()
        if now >= self.next_free:
            self.next_free = now + 1.0
            return None
        if self.next_free - now > 2.0:
            raise proxy.Rejection(429, "too many", code="rate_limit_exceeded")
        slot, self.next_free = self.next_free, self.next_free + 1.0
        return self._wait_until(slot)

    async def _wait_until(self, when: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.clock.call_at(when, lambda: future.set_result(None))
        await future


async def test_admission_decided_at_once_and_waiters_woken_by_the_clock():
    clock = proxy.ManualClock()
    async with PluginHarness(Spacing(clock), clock=clock) as h:
        h.admit_now(h.context())
        second = h.spawn(h.admit(h.context()))
        third = h.spawn(h.admit(h.context()))
        await h.settle()
        assert not second.done() and not third.done()
        with pytest.raises(proxy.Rejection):  # the predicted wait is past 2 s: refused at once
            h.admit_now(h.context())
        await h.advance(1.0)
        assert second.done() and not third.done()
        await h.advance(1.0)
        assert third.done()


def test_run_now_refuses_what_waits():
    async def waits() -> None:
        await asyncio.sleep(0)

    async def answers() -> int:
        return 7

    assert run_now(answers()) == 7
    assert run_now(3) == 3
    with pytest.raises(AssertionError, match="waited"):
        run_now(waits())


def test_manual_clock_runs_timers_in_order_at_their_time():
    clock = proxy.ManualClock(start=10.0)
    fired: list[tuple[str, float]] = []
    clock.call_at(12.0, lambda: fired.append(("b", clock.monotonic())))
    clock.call_at(11.0, lambda: fired.append(("a", clock.monotonic())))
    cancelled = clock.call_at(11.5, lambda: fired.append(("x", clock.monotonic())))
    cancelled.cancel()
    clock.advance(5.0)
    assert fired == [("a", 11.0), ("b", 12.0)] and clock.monotonic() == 15.0
    assert clock.wall() - clock.monotonic() == proxy.ManualClock(start=10.0).wall() - 10.0
