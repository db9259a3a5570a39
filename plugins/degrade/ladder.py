"""One route's ladder: which of its steps are in force now, with hysteresis.

Readings are predicted waits (seconds) of requests on the route. A step comes into force
when a request finds the route short (a wait above ``threshold``) and no step in force
absorbs it — at most one more every ``escalate_s``, and only if the wait has not improved
since the last one came in (the steps in force are not enough). Steps come off one at a time, the
last first, each once capacity has been back (every wait below ``recover``) for
``hold_s`` since the later of the last short reading and the last change. Time is the
plugin's clock; nothing runs between readings: :meth:`Ladder.decay` catches up when
asked (a request, or a status report), so an idle route's steps come off on time.
"""

from __future__ import annotations

import math

from .settings import LadderSettings, StepSettings

__all__ = ["Ladder"]

#: A wait this much of the one that brought the last step in counts as improving.
_IMPROVED = 0.9


class Ladder:
    """The state of one route's ladder."""

    __slots__ = ("route", "settings", "steps", "threshold", "recover", "level", "changed", "last_high",
                 "last_wait", "wait_at_change")

    def __init__(self, route: str, settings: LadderSettings, now: float) -> None:
        self.route = route
        self.settings = settings
        self.steps: tuple[StepSettings, ...] = tuple(settings.steps)
        self.threshold = settings.threshold_ms / 1000.0
        self.recover = settings.recover_ms / 1000.0
        self.level = 0  # steps[:level] are in force
        self.changed = -math.inf
        self.last_high = -math.inf  # the last reading at or above recover
        self.last_wait = 0.0
        self.wait_at_change = 0.0  # the wait that brought the last step into force

    @property
    def in_force(self) -> tuple[StepSettings, ...]:
        return self.steps[:self.level]

    def decay(self, now: float) -> int:
        """Take off the steps whose time is up; how many came off."""
        hold = self.settings.hold_s
        off = 0
        while self.level > 0:
            since = max(self.last_high, self.changed)
            if now - since < hold:
                break
            self.level -= 1
            self.changed = since + hold
            off += 1
        return off

    def observe(self, wait: float, now: float) -> int:
        """A request's predicted wait; returns how many steps came off (before it counts)."""
        off = self.decay(now)
        self.last_wait = wait
        if wait >= self.recover:
            self.last_high = now
        return off

    def escalate(self, now: float, wait: float) -> StepSettings | None:
        """Capacity is short (``wait``) and nothing in force absorbed a request: the next step, if its
        time has come and the steps in force have not improved the wait (by a tenth) since the last."""
        if self.level >= len(self.steps) or now - self.changed < self.settings.escalate_s:
            return None
        if self.level and wait < _IMPROVED * self.wait_at_change:
            return None  # getting better: give the steps in force their time
        self.level += 1
        self.changed = now
        self.last_high = now
        self.wait_at_change = wait
        return self.steps[self.level - 1]

    def short(self, wait: float) -> bool:
        return wait > self.threshold
