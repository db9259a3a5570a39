"""The per-key policy: one typed value produced by authentication, read by every other stage.

An auth plugin (the built-in one, or yours: JWT, a database) fills
:class:`KeyPolicy` for each caller; the limiter, the budget check, the router and
the passthrough grant read it. It is a frozen pydantic model: a wrong shape fails
where the policy is built — at start-up for keys in the config — never in the
middle of a request.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from functools import cached_property

from pydantic import ConfigDict, Field

from .settings import NonEmptyStr, NonNegativeFloat, PositiveFloat, PositiveInt, Settings


class RateLimits(Settings):
    """Per-key limits; each one set overrides the rate limiter's per-key default."""

    requests_per_second: PositiveFloat | None = None
    """Sustained request rate (the request bucket's refill); unset: `per_key`'s."""
    burst: PositiveInt | None = None
    """Request bucket capacity: requests that may arrive at once; unset: `per_key`'s, else
    ⌈`requests_per_second`⌉."""
    tokens_per_minute: PositiveInt | None = None
    """Token bucket: capacity and refill per minute (prompt and completion); unset: `per_key`'s."""
    max_concurrent: PositiveInt | None = None
    """Requests in flight at once; unset: `per_key`'s."""


class Budget(Settings):
    """Spending caps in US dollars over UTC calendar periods.

    A field left out falls back to the default budget; set to ``null`` it means
    "no cap" for this key whatever the default (``model_fields_set`` tells which).
    """

    daily_usd: NonNegativeFloat | None = None
    """US dollars per UTC day; left out: the default budget's; `null`: no cap."""
    monthly_usd: NonNegativeFloat | None = None
    """US dollars per UTC calendar month; left out: the default budget's; `null`: no cap."""

    def limit(self, period: str, default: float | None) -> float | None:
        """This key's cap for ``period`` (``"daily_usd"`` / ``"monthly_usd"``)."""
        return getattr(self, period) if period in self.model_fields_set else default


class KeyPolicy(Settings):
    """What one caller may do. The defaults are the most permissive: no lists, no limits.

    :param models: allowed model names or globs (``deepseek-*``), matched against the
        name the client asked for; ``None`` allows every model.
    :param endpoints: passthrough endpoints (the first path segment under ``/v1``:
        ``files``, ``batches``, ...) this key may reach; ``None`` means the
        gateway's default (see ``passthrough`` in the README), ``[]`` none.
    :param priority: higher waits less in admission queues.
    :param rate_limit: per-key limits overriding the rate limiter's defaults.
    :param budget: per-key spending caps.
    :param force_tier: may pick a router tier with the ``x-floodgate-tier`` header.
    :param degrade: may be served degraded under overload (a canned answer, a cheaper route,
        a shorter answer, shed). ``False``: priority traffic gets the route's own models or an
        error, never a silent downgrade.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[NonEmptyStr, ...] | None = Field(None, min_length=1)
    endpoints: tuple[NonEmptyStr, ...] | None = None
    priority: int = 0
    rate_limit: RateLimits | None = None
    budget: Budget | None = None
    force_tier: bool = False
    degrade: bool = True

    @cached_property
    def _model_predicate(self) -> Callable[[str], bool]:
        patterns = self.models or ()
        exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
        globs = [p for p in patterns if p not in exact]
        if not globs:
            return exact.__contains__
        match = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)).match
        return lambda model: model in exact or match(model) is not None

    def allows_model(self, model: str) -> bool:
        """Whether this key may use ``model`` (a client-facing name)."""
        return self.models is None or self._model_predicate(model)

    def allows_endpoint(self, endpoint: str, default: frozenset[str] | None) -> bool:
        """Whether this key may reach the passthrough ``endpoint`` (its first path segment).

        :param default: the grant of keys without ``endpoints`` (``None``: every endpoint).
        """
        granted = frozenset(self.endpoints) if self.endpoints is not None else default
        return granted is None or endpoint in granted or "*" in granted


#: The policy of callers no plugin restricts (anonymous, admin).
UNRESTRICTED = KeyPolicy()
