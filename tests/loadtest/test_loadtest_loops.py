"""Tests of the load generator's loops (proxy/loadtest/runner.py), shared with bench/load.py."""

from __future__ import annotations

import asyncio

import pytest

from proxy.loadtest.runner import closed_loop, open_schedule


async def test_open_schedule_keeps_to_the_schedule() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = [(due, lag) async for due, lag in open_schedule(50.0, 5, lambda: loop.time() - t0, start=0.1)]
    assert [due for due, _ in got] == pytest.approx([0.1, 0.12, 0.14, 0.16, 0.18])
    assert all(-0.005 < lag < 0.1 for _, lag in got)  # slept until each was due


async def test_open_schedule_reports_lag_and_gives_up_only_when_told() -> None:
    late = [(due, lag) async for due, lag in open_schedule(10.0, 3, lambda: 10.0)]
    assert late == [(0.0, 10.0), (0.1, pytest.approx(9.9)), (0.2, pytest.approx(9.8))]
    assert [due async for due, _ in open_schedule(10.0, 3, lambda: 10.0, give_up_at=5.0)] == []
    # Not due yet: it waits for it, and gives up only on requests already overdue.
    assert [due async for due, _ in open_schedule(1.0, 1, lambda: 10.0, start=10.001, give_up_at=5.0)] == [10.001]


async def test_closed_loop_bounds() -> None:
    sent: list[float] = []
    in_flight = peak = 0

    async def send(now: float) -> None:
        nonlocal in_flight, peak
        sent.append(now)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1

    clock = asyncio.get_running_loop().time
    await closed_loop(send, concurrency=3, limit=7, deadline=clock() + 60, clock=clock)
    assert len(sent) == 7 and peak == 3 and sent == sorted(sent)
    sent.clear()
    await closed_loop(send, concurrency=3, limit=100_000, deadline=clock() + 0.05, clock=clock)
    assert 3 <= len(sent) < 100_000 and all(now < sent[0] + 0.05 for now in sent)
