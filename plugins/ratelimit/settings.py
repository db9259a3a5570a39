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
    """The limits of one scope (a key's ``policy.rate_limit`` overrides them per key).

    Every key is optional; an absent key is no limit of that kind.
    """

    requests_per_second: proxy.PositiveFloat | None = None
    """Sustained request rate (the request bucket's refill); unset: no request-rate limit."""
    burst: _AtLeastOne | None = None
    """Request bucket capacity: how many requests may arrive at once; unset:
    ⌈`requests_per_second`⌉."""
    tokens_per_minute: proxy.PositiveInt | None = None
    """Token bucket, capacity and refill per minute: each request reserves its estimated prompt
    plus its maximum output, settled to the real usage when it finishes (passthrough requests
    reserve none). A request that alone needs more is refused."""
    max_concurrent: proxy.PositiveInt | None = None
    """Requests in flight at once (from admission until the response is finished)."""


class QueueSettings(proxy.Settings):
    """``mode: queue``: how long and how many requests may wait for a bucket."""

    max_wait_ms: proxy.PositiveFloat = 2000.0
    """Longest wait for capacity; a request whose predicted wait is longer gets 429 at once."""
    max_length: _AtLeastOne = 1000
    """Requests waiting in one worker process at most; beyond it, 429 at once."""


class SharedSettings(proxy.Settings):
    """How the limiter uses a store shared by a fleet's workers (Redis)."""

    lease_s: Annotated[float, Field(ge=1)] = 30.0
    """Seconds a concurrency slot stays held without renewal: how long a dead worker's slots stay
    taken. Live requests renew theirs every third of it, so it need not cover the longest
    stream."""
    recheck_ms: Annotated[float, Field(ge=1)] = 50.0
    """Milliseconds between a queued request's asks for a concurrency slot (another worker's
    request ending does not wake this worker's queue)."""


class AdaptiveSettings(proxy.Settings):
    """How deployments with ``adaptive: true`` find their concurrency (see :mod:`.adaptive`)."""

    initial: _AtLeastOne = 4
    """Requests in flight to start from; it grows by one slot per answer (doubling per round)
    until the first sign of overload."""
    min: _AtLeastOne = 1
    """Never fewer than this in flight."""
    increase: proxy.PositiveFloat = 1.0
    """Slots added per round of normal answers (a round: as many answers as the limit) while
    the limit is the bottleneck."""
    decrease: Annotated[float, Field(gt=0, lt=1)] = 0.8
    """Factor applied on overload (a 429, a timeout, or a slow first token), at most once per two
    round trips."""
    latency_tolerance: Annotated[float, Field(gt=1)] = 2.0
    """A time to first token above this many times the deployment's unloaded one counts as
    overload."""


class DeploymentPolicy(proxy.Settings):
    """``plugins.ratelimit.deployments``: placing requests on a model's deployments."""

    strategy: Literal["weighted", "least_outstanding", "latency"] = "weighted"
    """Which deployment with headroom gets a request: `weighted` (random, in proportion to their
    weights), `least_outstanding` (fewest requests in flight per unit of weight) or `latency`
    (lowest recent time to first token)."""
    follow_headers: bool = True
    """Let the provider's `x-ratelimit-*` and `retry-after` headers lower a deployment's limits
    and buckets (never above the catalogue's)."""
    adaptive: AdaptiveSettings = AdaptiveSettings()
    """How deployments with `adaptive: true` find their concurrency (AIMD)."""


class RateLimitSettings(proxy.Settings):
    """Token buckets per scope (all traffic, key, model, upstream, and each deployment's limits
    from the catalogue) and a priority queue for bursts. A request takes from every bucket it
    needs or from none; absent scopes are not limited. See the
    [README](../README.md#pluginsratelimit--token-buckets-and-a-burst-queue)."""

    mode: Literal["queue", "reject"] = "queue"
    """`queue`: wait for capacity (up to `queue.max_wait_ms`), by key priority then arrival;
    `reject`: 429 at once."""
    queue: QueueSettings = QueueSettings()
    """`mode: queue`: how long and how many requests may wait."""
    global_: Limits | None = Field(default=None, alias="global")
    """Limits on all traffic."""
    per_key: Limits | None = None
    """Limits each key gets (buckets of its own); a key's `rate_limit` overrides them."""
    models: dict[str, Limits] = Field(default_factory=dict)
    """Limits per catalogue entry (of the route's first target; a pattern's name for the names it
    serves)."""
    upstreams: dict[str, Limits] = Field(default_factory=dict)
    """Limits per upstream (of the route's first target; passthrough: the first upstream)."""
    default_max_tokens: proxy.NonNegativeInt = 1024
    """Output tokens reserved for a request that sets no `max_tokens`, `max_completion_tokens` or
    `max_output_tokens` (nor does its route)."""
    shared: SharedSettings = SharedSettings()
    """With a shared store (`state.backend: redis`): concurrency leases and re-checks."""
    deployments: DeploymentPolicy = DeploymentPolicy()
    """Placing requests on a model's deployments (their catalogue `limits` are buckets of scope
    `deployment`, in the same store as every other bucket)."""
