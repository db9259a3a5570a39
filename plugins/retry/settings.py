"""The ``plugins.retry`` block: retries, backoff, the deadline and the circuit breakers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

import proxy

__all__ = ["BreakerSettings", "HedgeSettings", "ModelOverrides", "RetrySettings"]


class BreakerSettings(proxy.Settings):
    """``plugins.retry.breaker``: one circuit breaker per catalogue model."""

    enabled: bool = True
    failures: proxy.PositiveInt = 5
    failure_ratio: Annotated[float, Field(gt=0, le=1)] | None = 0.5
    window_s: proxy.PositiveFloat = 30.0
    min_requests: proxy.PositiveInt = 10
    cooldown_s: proxy.PositiveFloat = 10.0
    trip_on_429: bool = True  # models without deployments only: a deployment's 429s are the rate limiter's


class HedgeSettings(proxy.Settings):
    """``plugins.retry.hedge``: race a slow attempt with a second one (opt-in)."""

    models: list[str] = []  # catalogue models whose attempts may be hedged
    routes: list[str] = []  # routes (a router tier, or a catalogue model's own route) whose attempts may be
    after_ms: float | str = "p95"  # milliseconds, or "p95": no meaningful answer by then: hedge
    min_after_ms: proxy.NonNegativeFloat = 50.0  # with p95: never sooner than this
    min_samples: proxy.PositiveInt = 20  # with p95: recent samples needed before any hedging
    to: Literal["next", "same"] = "next"  # the route's next target (else the same), or the same model again
    max_ratio: Annotated[float, Field(gt=0, le=1)] = 0.1  # hedges per request to the model, at most

    @field_validator("after_ms", mode="before")
    @classmethod
    def _after(cls, value: object) -> float | str:
        if value == "p95":
            return "p95"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise ValueError("must be a number of milliseconds greater than 0, or 'p95'")


class ModelOverrides(proxy.Settings):
    """``plugins.retry.models.<model>``: per-target overrides."""

    max_retries: proxy.NonNegativeInt | None = None
    retry_on_timeout: bool | None = None


class RetrySettings(proxy.Settings):
    """``plugins.retry``."""

    max_retries: proxy.NonNegativeInt = 2
    retry_on_timeout: bool = False
    backoff_base_s: proxy.NonNegativeFloat = 0.25
    max_backoff_s: proxy.NonNegativeFloat = 4.0
    max_retry_after_s: proxy.NonNegativeFloat = 5.0
    deadline_s: proxy.PositiveFloat = 30.0
    seed: int | None = None
    models: dict[str, ModelOverrides] = {}
    breaker: BreakerSettings = BreakerSettings()
    hedge: HedgeSettings = HedgeSettings()
