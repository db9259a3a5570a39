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
    """One rung of the ladder: a name and exactly one action (``faq``, ``route``, ``max_tokens``,
    ``shed_below_priority``, ``reject``)."""

    name: str | None = None
    """Sent in `x-floodgate-degraded` and a metric label: 1-64 ASCII letters, digits and
    `. _ : -`; unset: its action's name (`faq`, `route`, ...)."""
    faq: bool | None = None
    """Action `true`: short-circuit plugins may answer looser matches (the FAQ: its rules'
    `max_length` and `exclude` ignored)."""
    route: proxy.NonEmptyStr | None = None
    """Action: move the request to this (cheaper) route, if that route has capacity (its own
    predicted wait within its threshold)."""
    max_tokens: proxy.PositiveInt | None = None
    """Action: cap the answer at this many tokens, in the field the client (or its route) used;
    the request continues down the ladder."""
    shed_below_priority: int | None = None
    """Action: refuse keys whose `priority` is below this."""
    reject: bool | None = None
    """Action `true`: refuse."""
    retry_after_s: proxy.PositiveFloat = 5.0
    """Shed and reject: the 429's `retry-after` (code `overloaded`)."""

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

    threshold_ms: proxy.PositiveFloat = 250.0
    """A request whose predicted wait for the route's capacity is above this finds it short: the
    steps in force apply to it, and if none absorbs it the next step comes into force."""
    recover_ms: proxy.NonNegativeFloat = 50.0
    """Capacity is back while predicted waits are below this (below `threshold_ms`)."""
    hold_s: proxy.PositiveFloat = 10.0
    """The last step in force comes off once capacity has been back this long; then the next,
    one at a time."""
    escalate_s: proxy.NonNegativeFloat = 1.0
    """At most one more step this often, and only while the wait has not improved by a tenth
    since the last one came in (the time the steps in force get to show their effect)."""
    steps: Annotated[list[StepSettings], Field(min_length=1)]
    """The steps, in the order they come into force; each has exactly one action."""

    @model_validator(mode="after")
    def _hysteresis(self) -> LadderSettings:
        if self.recover_ms >= self.threshold_ms:
            raise ValueError(f"recover_ms ({self.recover_ms:g}) must be below threshold_ms ({self.threshold_ms:g})")
        return self


class DegradeSettings(proxy.Settings):
    """The overload ladder: per route, ordered steps that apply while the route's capacity is
    short, as the rate limiter predicts it (`proxy_predicted_wait`). Keys with `degrade: false`
    are never degraded; a route without rate limits is never short. See the
    [README](../README.md#pluginsdegrade--the-overload-ladder)."""

    routes: dict[str, LadderSettings] = {}
    """A ladder per route name (a router tier, or a catalogue model's own route), checked at
    start-up."""
