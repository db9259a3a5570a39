"""The ``plugins.retry`` block: retries, backoff, the deadline and the circuit breakers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

import proxy

__all__ = ["BreakerSettings", "HedgeSettings", "ModelOverrides", "RetrySettings"]


class BreakerSettings(proxy.Settings):
    """``plugins.retry.breaker``: one circuit breaker per catalogue model (per deployment)."""

    enabled: bool = True
    """One circuit breaker per model (per deployment for a model with several); `false`: none."""
    failures: proxy.PositiveInt = 5
    """Open after this many failures in a row."""
    failure_ratio: Annotated[float, Field(gt=0, le=1)] | None = 0.5
    """Or open when the failure ratio over `window_s` reaches this (with at least `min_requests`
    outcomes in the window); `null`: only `failures` counts."""
    window_s: proxy.PositiveFloat = 30.0
    """Seconds of outcomes `failure_ratio` looks at (a rolling window)."""
    min_requests: proxy.PositiveInt = 10
    """Outcomes the window needs before `failure_ratio` may open the breaker."""
    cooldown_s: proxy.PositiveFloat = 10.0
    """Seconds it stays open; then one half-open probe request decides (success closes it,
    failure opens it again)."""
    trip_on_429: bool = True
    """Whether an upstream 429 counts as a failure. Models without deployments only: a
    deployment's 429s are the rate limiter's to follow and never trip its breaker."""


class HedgeSettings(proxy.Settings):
    """``plugins.retry.hedge``: race a slow attempt with a second one (opt-in)."""

    models: list[str] = []
    """Catalogue models whose attempts may be hedged."""
    routes: list[str] = []
    """Routes (a router tier, or a catalogue model's own route) whose attempts may be hedged."""
    after_ms: proxy.PositiveFloat | Literal["p95"] = "p95"
    """Hedge an attempt with no meaningful answer after this many milliseconds, or `p95`: after
    the model's recent 95th percentile time to the first meaningful event (its last 200
    attempts, streams and non-streams apart)."""
    min_after_ms: proxy.NonNegativeFloat = 50.0
    """With `p95`: never hedge sooner than this."""
    min_samples: proxy.PositiveInt = 20
    """With `p95`: recent samples needed before any hedging."""
    to: Literal["next", "same"] = "next"
    """`next`: the route's next target whose breaker lets it (else the same model); `same`: the
    same model again."""
    max_ratio: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Hedges per request to the model, at most: each request earns that much of a hedge, each
    hedge spends one, and at most 100 requests' worth is saved up."""

    @field_validator("after_ms", mode="before")
    @classmethod
    def _after(cls, value: object) -> float | Literal["p95"]:
        if value == "p95":
            return "p95"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise ValueError("must be a number of milliseconds greater than 0, or 'p95'")


class ModelOverrides(proxy.Settings):
    """``plugins.retry.models.<model>``: per-target overrides."""

    max_retries: proxy.NonNegativeInt | None = None
    """This model's `max_retries`; unset: the plugin's."""
    retry_on_timeout: bool | None = None
    """This model's `retry_on_timeout`; unset: the plugin's."""


class RetrySettings(proxy.Settings):
    """Retries, fallbacks, circuit breakers and hedging, within one deadline per request. A model
    with several deployments fails over among them first. See the
    [README](../README.md#pluginsretry--retries-fallbacks-circuit-breakers)."""

    max_retries: proxy.NonNegativeInt = 2
    """Retries of the same target after its first try, on 429, 500, 502, 503, 504, connection
    errors and invalid bodies (other 5xx fall back at once; other 4xx stop)."""
    retry_on_timeout: bool = False
    """Whether timeouts and stalls are retried too; `false`: they move to the next target at
    once."""
    backoff_base_s: proxy.NonNegativeFloat = 0.25
    """Exponential backoff with full jitter: the n-th retry waits
    `uniform(0, min(max_backoff_s, backoff_base_s·2ⁿ⁻¹))`."""
    max_backoff_s: proxy.NonNegativeFloat = 4.0
    """The longest backoff (at least `backoff_base_s`)."""
    max_retry_after_s: proxy.NonNegativeFloat = 5.0
    """Honour the upstream's `Retry-After` up to this many seconds; longer: the next target at
    once."""
    deadline_s: proxy.PositiveFloat = 30.0
    """One budget, in seconds, for all attempts and waits of a request (from its first attempt);
    each attempt's timeouts are capped to what is left."""
    seed: int | None = None
    """Seeds the jitter (reproducible runs)."""
    models: dict[str, ModelOverrides] = {}
    """Per catalogue model: its own `max_retries` and `retry_on_timeout`."""
    breaker: BreakerSettings = BreakerSettings()
    """Circuit breakers: a target that keeps failing is skipped until a probe succeeds."""
    hedge: HedgeSettings = HedgeSettings()
    """Opt-in hedging: race a slow attempt with a second one; the first meaningful answer wins."""
