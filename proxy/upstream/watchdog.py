"""The timer of an upstream attempt (:class:`Watchdog`): its deadline and its stalls."""

from __future__ import annotations

import asyncio


class Watchdog:
    """Cancels the current task when no event came for ``stall`` seconds, or at ``deadline``
    (event loop time). One timer per stall period, not one per read: a read only stores
    the time (:meth:`touch`). While the caller writes to the client (``writing``), a
    slow client is not taken for a stalled upstream.

    One watchdog bounds a whole attempt: ``deadline`` moves (a plain attribute; the timer
    re-arms itself only if it fires early) from the ``first_byte`` budget to ``total``
    once the headers are in — instead of an ``asyncio.timeout`` block per await, which
    profiles put at ~7 % of the no-plugin path's CPU.
    """

    __slots__ = ("_loop", "_task", "_cancelling", "stall", "deadline", "last", "writing", "expired", "_handle",
                 "_asked")

    def __init__(self, stall: float | None, deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self.stall = stall
        self.deadline = deadline
        self.last = self._loop.time()
        self.writing = False
        self.expired: str | None = None  # "stall" or "deadline" once it fired
        self._asked = False
        self._handle = self._loop.call_at(self._due(), self._check)

    def _due(self) -> float:
        return self.deadline if self.stall is None else min(self.deadline, self.last + self.stall)

    def touch(self) -> None:
        self.last = self._loop.time()

    def watch_stalls(self, stall: float) -> None:
        """From now on, also bound the gap between events."""
        self.stall = stall
        self.touch()
        self._handle.cancel()
        self._handle = self._loop.call_at(self._due(), self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self.deadline:
            self.expired = "deadline"
        elif not self.writing and self.stall is not None and now >= self.last + self.stall:
            self.expired = "stall"
        else:
            due = self._due()
            self._handle = self._loop.call_at(due if due > now else now + (self.stall or 1.0), self._check)
            return
        self._task.cancel()

    def caught(self) -> bool:
        """In an ``except CancelledError``: whether this watchdog caused it (then swallowed). A
        cancel from elsewhere meanwhile (the client left, a hedge race ended) still propagates."""
        if self.expired is None or self._asked:
            return False
        self._asked = True  # the task's cancel count is corrected once, whoever asks again
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        self._handle.cancel()
