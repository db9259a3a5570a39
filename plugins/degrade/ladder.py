"""One route's ladder: which of its steps are in force now, with hysteresis.

Readings are predicted waits (seconds) of requests on the route. A step comes into force
when a request finds the route short (a wait above ``threshold``) and no step in force
absorbs it — at most one more every ``escalate_s``. Steps come off one at a time, the
last first, each once capacity has been back (every wait below ``recover``) for
``hold_s`` since the later of the last short reading and the last change. Time is the
plugin's clock; nothing runs between readings: :meth:`Ladder.decay` catches up when
asked (a request, or a status report), so an idle route's steps come off on time.
"""

from __future__ import annotations

import math

from .settings import LadderSettings, StepSettings

__all__ = ["Ladder"]


class Ladder:
    """The state of one route's ladder."""

    __slots__ = ("route", "settings", "steps", "threshold", "recover", "level", "changed", "last_high",
                 "last_wait")

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

    def escalate(self, now: float) -> StepSettings | None:
        """Capacity is short and nothing in force absorbed a request: the next step, if its time has come."""
        if self.level >= len(self.steps) or now - self.changed < self.settings.escalate_s:
            return None
        self.level += 1
        self.changed = now
        self.last_high = now
        return self.steps[self.level - 1]

    def short(self, wait: float) -> bool:
        return wait > self.threshold
