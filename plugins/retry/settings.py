"""The ``plugins.retry`` block: retries, backoff, the deadline and the circuit breakers."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

import proxy

__all__ = ["BreakerSettings", "ModelOverrides", "RetrySettings"]


class BreakerSettings(proxy.Settings):
    """``plugins.retry.breaker``: one circuit breaker per catalogue model."""

    enabled: bool = True
    failures: proxy.PositiveInt = 5
    failure_ratio: Annotated[float, Field(gt=0, le=1)] | None = 0.5
    window_s: proxy.PositiveFloat = 30.0
    min_requests: proxy.PositiveInt = 10
    cooldown_s: proxy.PositiveFloat = 10.0
    trip_on_429: bool = True


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
