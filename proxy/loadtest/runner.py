"""The load generator: the open loop (a fixed schedule) and the closed loop (N workers back to back),
the live progress line, and :func:`run_loadtest`, which runs one test and returns a :class:`LoadTestResult`.

The two loops themselves, :func:`open_schedule` and :func:`closed_loop`, know nothing of HTTP:
the benchmark's driver (``bench/load.py``) runs its own raw client on them.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

import aiohttp
import orjson

from .client import Sample, send
from .options import MAX_REQUESTS, LoadTestOptions
from .prompts import _builtin

# How long an open-loop generator may run past the end of its schedule catching up before it
# gives up on the remaining (overdue) requests; they are reported as "unsent".
_CATCH_UP_GRACE_S = 1.0
_PROGRESS_INTERVAL_S = 0.25


@dataclass
class LoadTestResult:
    options: LoadTestOptions
    samples: list[Sample]
    elapsed: float
    sent: int
    unsent: int = 0  # open loop: overdue requests given up when the generator fell too far behind
    abandoned: int = 0  # in flight when the run was interrupted
    interrupted: bool = False
    peak_in_flight: int = 0


async def open_schedule(rate: float, count: int, clock: Callable[[], float], *, start: float = 0.0,
                        give_up_at: float | None = None) -> AsyncIterator[tuple[float, float]]:
    """The open loop: yield ``(due, lag)`` for requests ``0..count-1``, request ``i`` being due at
    ``start + i / rate`` on ``clock``. It sleeps until each is due but never waits for answers (the
    caller starts a task and iterates on), so a slow server cannot slow the schedule down.
    ``lag = clock() - due`` when yielded: how late the generator is. It stops early, on a request
    already overdue, once ``clock()`` is past ``give_up_at``; the caller counts what it was given."""
    for i in range(count):
        due = start + i / rate
        now = clock()
        if due > now:
            await asyncio.sleep(due - now)
        elif give_up_at is not None and now > give_up_at:
            return
        yield due, clock() - due


async def closed_loop(send: Callable[[float], Awaitable[object]], *, concurrency: int, limit: int,
                      deadline: float, clock: Callable[[], float]) -> None:
    """The closed loop: ``concurrency`` workers each ``await send(now)`` back to back (``now``: the
    send time on ``clock``) while fewer than ``limit`` requests were sent and ``clock() < deadline``."""
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < limit and (now := clock()) < deadline:
            issued += 1
            await send(now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class _Runner:
    """One run's state: counters, samples, the body picker."""

    def __init__(self, options: LoadTestOptions, session: aiohttp.ClientSession) -> None:
        self.options = options
        self.session = session
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        prompts = list(options.prompts) or _builtin()
        # Bodies are serialised once: the generator must stay cheap at high rates.
        extra: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}} \
            if options.stream else {}
        if options.max_tokens is not None:
            extra["max_tokens"] = options.max_tokens
        self.bodies = [orjson.dumps({"model": options.model, "messages": p.messages, **extra})
                       for p in prompts]
        self.cum_weights = list(itertools.accumulate(p.weight for p in prompts))
        self.rng = random.Random(options.seed)
        self.samples: list[Sample] = []
        self.sent = self.ok = self.errors = self.in_flight = self.peak_in_flight = 0
        self.unsent = self.abandoned = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        return self.loop.time() - self.t0

    def _body(self) -> bytes:
        index = bisect.bisect_right(self.cum_weights, self.rng.random() * self.cum_weights[-1])
        return self.bodies[min(index, len(self.bodies) - 1)]

    async def one(self, scheduled: float) -> None:
        body = self._body()
        self.sent += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            sample = await send(self.session, self.options.endpoint, body, scheduled, clock=self.now,
                                stream=self.options.stream)
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        finally:
            self.in_flight -= 1
        self.samples.append(sample)
        if sample.ok:
            self.ok += 1
        else:
            self.errors += 1

    # -- loops ------------------------------------------------------------------
    def _limit(self) -> int:
        o = self.options
        return min(o.requests or MAX_REQUESTS,
                   math.ceil(o.rate * o.duration - 1e-9) if o.rate else MAX_REQUESTS)

    async def open_loop(self) -> None:
        rate = self.options.rate
        assert rate is not None
        limit, launched = self._limit(), 0
        # Hopelessly behind the schedule's end: say so rather than run on forever.
        give_up_at = self.options.duration + _CATCH_UP_GRACE_S
        async for due, _ in open_schedule(rate, limit, self.now, give_up_at=give_up_at):
            task = asyncio.create_task(self.one(due))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            launched += 1
        self.unsent = limit - launched
        if self.tasks:
            await asyncio.gather(*self.tasks)

    async def closed_loop(self) -> None:
        assert self.options.concurrency is not None
        await closed_loop(self.one, concurrency=self.options.concurrency, limit=self._limit(),
                          deadline=self.options.duration, clock=self.now)


async def _progress(runner: _Runner, out: IO[str]) -> None:
    """``elapsed sent ok errors in-flight rate`` on one rewritten line, ~4x/s."""
    window: deque[tuple[float, int]] = deque(maxlen=5)  # ~1 s of (time, finished)
    while True:
        now, finished = runner.now(), runner.ok + runner.errors
        window.append((now, finished))
        span = now - window[0][0]
        rate = (finished - window[0][1]) / span if span > 0 else 0.0
        out.write(f"\r\x1b[K{now:7.1f}s  sent {runner.sent}  ok {runner.ok}  "
                  f"errors {runner.errors}  in flight {runner.in_flight}  {rate:.1f} resp/s")
        out.flush()
        await asyncio.sleep(_PROGRESS_INTERVAL_S)


async def run_loadtest(options: LoadTestOptions, *, progress: IO[str] | None = None,
                       stop: asyncio.Event | None = None) -> LoadTestResult:
    """Run one load test. ``progress``: where to draw the live line (None: nowhere).
    Setting ``stop`` ends the run early: nothing more is sent, in-flight requests are
    abandoned and the result is marked interrupted."""
    pool = options.concurrency if options.concurrency is not None else options.max_in_flight
    connector = aiohttp.TCPConnector(limit=pool, limit_per_host=pool)
    timeout = aiohttp.ClientTimeout(total=options.timeout, sock_connect=min(10.0, options.timeout))
    headers = {**options.headers, "Authorization": f"Bearer {options.key}",
               "Content-Type": "application/json", "User-Agent": "floodgate-loadtest"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:
        runner = _Runner(options, session)
        generate = asyncio.create_task(
            runner.open_loop() if options.mode == "open" else runner.closed_loop())
        waiters: set[asyncio.Task[Any]] = {generate}
        stopper = asyncio.create_task(stop.wait()) if stop is not None else None
        if stopper is not None:
            waiters.add(stopper)
        drawer = asyncio.create_task(_progress(runner, progress)) if progress else None
        interrupted = False
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not generate.done():
                interrupted = True
                for task in (generate, *runner.tasks):
                    task.cancel()
                await asyncio.gather(generate, *runner.tasks, return_exceptions=True)
            else:
                generate.result()  # re-raise a bug in the generator itself
        finally:  # also when run_loadtest itself is cancelled: leave nothing running
            for leftover in (generate, stopper, drawer, *runner.tasks):
                if leftover is not None and not leftover.done():
                    leftover.cancel()
            if progress is not None:
                progress.write("\r\x1b[K")
                progress.flush()
        elapsed = runner.now()
    return LoadTestResult(options, runner.samples, elapsed, runner.sent, runner.unsent,
                          runner.abandoned, interrupted, runner.peak_in_flight)
