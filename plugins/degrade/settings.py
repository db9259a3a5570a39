"""The ``plugins.degrade`` block: an overload ladder per route."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

import proxy

__all__ = ["ACTIONS", "DegradeSettings", "LadderSettings", "StepSettings"]

#: The fields of a step that say what it does; a step has exactly one.
ACTIONS = ("faq", "route", "max_tokens", "shed_below_priority", "reject")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class StepSettings(proxy.Settings):
    """One rung of the ladder: a name and exactly one action.

    * ``faq: true`` — short-circuit plugins may answer looser matches (the FAQ plugin then
      ignores its rules' ``max_length`` and ``exclude``);
    * ``route: <name>`` — move the request to that (cheaper) route, if it has capacity;
    * ``max_tokens: N`` — cap the answer's length at N (whichever field the client used);
    * ``shed_below_priority: P`` — refuse keys whose priority is below P (429, ``retry-after``);
    * ``reject: true`` — refuse (429, ``retry-after``).
    """

    name: str | None = None  # default: the action's name ("faq", "route", ...)
    faq: bool | None = None
    route: proxy.NonEmptyStr | None = None
    max_tokens: proxy.PositiveInt | None = None
    shed_below_priority: int | None = None
    reject: bool | None = None
    retry_after_s: proxy.PositiveFloat = 5.0  # shed and reject: what the 429 says

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError("must be 1-64 characters: ASCII letters, digits and . _ : - (it is sent in the "
                             "x-floodgate-degraded header)")
        return value

    @model_validator(mode="after")
    def _one_action(self) -> StepSettings:
        given = [a for a in ACTIONS if getattr(self, a) not in (None, False)]
        if len(given) != 1:
            found = f" (found {', '.join(given)})" if given else ""
            raise ValueError(f"a step needs exactly one action of {', '.join(ACTIONS)}{found}")
        return self

    @property
    def action(self) -> str:
        return next(a for a in ACTIONS if getattr(self, a) not in (None, False))

    @property
    def label(self) -> str:
        return self.name or self.action


class LadderSettings(proxy.Settings):
    """``plugins.degrade.routes.<route>``: when capacity is short, and the steps, in order."""

    #: A request that would wait longer than this for the route's capacity finds it short: the steps
    #: in force apply to it, and if none absorbs it the next step comes into force.
    threshold_ms: proxy.PositiveFloat = 250.0
    #: Capacity is back while requests would wait less than this.
    recover_ms: proxy.NonNegativeFloat = 50.0
    #: The last step in force comes off once capacity has been back this long (then the next one).
    hold_s: proxy.PositiveFloat = 10.0
    #: At most one more step comes into force this often (and only while the wait is not improving):
    #: the time the steps in force get to show their effect on the queue.
    escalate_s: proxy.NonNegativeFloat = 1.0
    steps: Annotated[list[StepSettings], Field(min_length=1)]

    @model_validator(mode="after")
    def _hysteresis(self) -> LadderSettings:
        if self.recover_ms >= self.threshold_ms:
            raise ValueError(f"recover_ms ({self.recover_ms:g}) must be below threshold_ms ({self.threshold_ms:g})")
        return self


class DegradeSettings(proxy.Settings):
    """``plugins.degrade``: overload ladders by route name (a router tier, or a catalogue model)."""

    routes: dict[str, LadderSettings] = {}
