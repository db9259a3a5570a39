"""Time for plugins: read it and schedule on it through one object, so tests can drive it.

Policies that depend on time (token buckets, queues, breakers, deadlines, budget
periods) take a :class:`Clock`. In production it is :class:`LoopClock`, the
running event loop's monotonic clock and the wall clock; the testing kit's
:class:`ManualClock` only moves when a test advances it, and runs what falls due
— so rate limits, cooldowns and queue deadlines are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A scheduled callback (what :meth:`Clock.call_at` returns)."""

    def cancel(self) -> None: ...

    def when(self) -> float: ...


class Clock(Protocol):
    """Monotonic seconds for durations, wall seconds for calendars, timers on the same scale."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (for rates, waits, deadlines)."""
        ...

    def wall(self) -> float:
        """Unix time (for calendar periods and timestamps)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once :meth:`monotonic` reaches ``when``."""
        ...


class LoopClock:
    """The event loops' clock and ``time.time()``.

    ``monotonic`` is ``time.monotonic`` itself (plugins read it several times per request:
    a C call, no frame of ours): asyncio's ``loop.time()`` is exactly that, and uvloop's is
    the same clock read at the start of the loop's iteration (millisecond steps), so timers
    set from it with :meth:`call_at` fire at most one iteration later than asked.
    """

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_at(when, callback)


class _ManualTimer:
    __slots__ = ("_when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self._when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def when(self) -> float:
        return self._when


class ManualClock:
    """A clock that stands still until :meth:`advance` moves it (tests).

    :param start: the monotonic reading to start at.
    :param wall_start: the Unix time matching ``start``.
    """

    def __init__(self, start: float = 1000.0, *, wall_start: float = 1_767_225_600.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, running every timer that falls due, in order (each at its own time)."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.callback()
        self._now = target

    @property
    def pending(self) -> int:
        """Timers scheduled and not yet run or cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)
