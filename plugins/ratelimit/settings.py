"""The ``plugins.ratelimit`` block, and the per-key ``rate_limit`` overrides."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

import proxy

__all__ = ["AdaptiveSettings", "DeploymentPolicy", "Limits", "QueueSettings", "RateLimitSettings",
           "SharedSettings"]

# ge=1 rather than proxy.PositiveInt: the same values, but the message users see stays "at least 1".
_AtLeastOne = Annotated[int, Field(ge=1)]


class Limits(proxy.Settings):
    """The limits of one scope (also the keys of ``principal.settings["rate_limit"]``).

    Every key is optional; an absent key is no limit of that kind.
    """

    #: Sustained request rate (refill of the request bucket).
    requests_per_second: proxy.PositiveFloat | None = None
    #: Request bucket capacity: how many requests may arrive at once. Default ``ceil(requests_per_second)``.
    burst: _AtLeastOne | None = None
    #: Token bucket: capacity and refill per minute (prompt + completion tokens).
    tokens_per_minute: proxy.PositiveInt | None = None
    #: Requests in flight at the same time (admission until the response is finished).
    max_concurrent: proxy.PositiveInt | None = None


class QueueSettings(proxy.Settings):
    """``mode: queue``: how long and how many requests may wait for a bucket."""

    max_wait_ms: proxy.PositiveFloat = 2000.0
    max_length: _AtLeastOne = 1000


class SharedSettings(proxy.Settings):
    """How the limiter uses a store shared by a fleet's workers (Redis)."""

    #: Seconds a concurrency slot stays held without renewal: how long a dead worker's slots stay
    #: taken. Live requests renew theirs every third of it, so it need not cover the longest stream.
    lease_s: Annotated[float, Field(ge=1)] = 30.0
    #: How often a request queued for a concurrency slot asks the shared store again (another
    #: worker's request ending does not wake this worker's queue).
    recheck_ms: Annotated[float, Field(ge=1)] = 50.0


class AdaptiveSettings(proxy.Settings):
    """How deployments with ``adaptive: true`` find their concurrency (see :mod:`.adaptive`)."""

    #: Requests in flight to start from (doubling per round of successes until the first back-off).
    initial: _AtLeastOne = 4
    #: Never fewer than this in flight.
    min: _AtLeastOne = 1
    #: Slots added per round of successes (a round: as many answers as the limit).
    increase: proxy.PositiveFloat = 1.0
    #: Factor applied on a 429, a timeout or a rising time to first token.
    decrease: Annotated[float, Field(gt=0, lt=1)] = 0.8
    #: A time to first token above this many times the deployment's unloaded one means overload.
    latency_tolerance: Annotated[float, Field(gt=1)] = 2.0


class DeploymentPolicy(proxy.Settings):
    """``plugins.ratelimit.deployments``: placing requests on a model's deployments."""

    #: Among deployments with headroom: ``weighted`` (random, in proportion to their weights),
    #: ``least_outstanding`` (fewest requests in flight per unit of weight) or ``latency``
    #: (lowest recent time to first token).
    strategy: Literal["weighted", "least_outstanding", "latency"] = "weighted"
    #: Let the provider's ``x-ratelimit-*`` / ``retry-after`` headers lower the deployment's buckets
    #: and its limits (never above the catalogue's).
    follow_headers: bool = True
    adaptive: AdaptiveSettings = AdaptiveSettings()


class RateLimitSettings(proxy.Settings):
    """The ``plugins.ratelimit`` block. Absent scopes are not limited."""

    mode: Literal["queue", "reject"] = "queue"
    queue: QueueSettings = QueueSettings()
    global_: Limits | None = Field(default=None, alias="global")
    #: Defaults for every key (principal); ``principal.settings["rate_limit"]`` overrides them per key.
    per_key: Limits | None = None
    #: Per catalogue model (the route's first target).
    models: dict[str, Limits] = Field(default_factory=dict)
    #: Per upstream (of the route's first target).
    upstreams: dict[str, Limits] = Field(default_factory=dict)
    #: Output tokens reserved when a request sets no max_tokens / max_completion_tokens / max_output_tokens.
    default_max_tokens: proxy.NonNegativeInt = 1024
    #: With a shared store (a fleet): concurrency leases and re-checks.
    shared: SharedSettings = SharedSettings()
    #: Placing requests on a model's deployments (the catalogue's ``deployments``; their limits are
    #: buckets of scope ``deployment``, in the same store as every other bucket).
    deployments: DeploymentPolicy = DeploymentPolicy()
