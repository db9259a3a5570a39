"""Token-bucket rate limiting with a priority queue (the ``ratelimit`` plugin).

Limits apply per *scope*: ``global`` (all traffic), ``key`` (per principal:
``per_key`` defaults, overridden by the key's ``policy.rate_limit``),
``model`` (the catalogue model of the route's first target), ``upstream``
(the upstream of that target; for passthrough requests, the default upstream) and
``deployment`` (the catalogue's ``deployments[].limits`` of a model on several
provider keys: a request is *placed* on one deployment with headroom, which the
provider's ``x-ratelimit-*`` headers and 429s keep honest and, for ``adaptive``
ones, whose concurrency is found by AIMD).
Each scope may limit three things:

* requests: ``requests_per_second`` with a ``burst`` (bucket capacity);
* tokens: ``tokens_per_minute``. Admission reserves the estimated prompt plus
  the requested maximum output (``max_tokens`` / ``max_completion_tokens`` /
  ``max_output_tokens``, the route target's overrides winning, else
  ``default_max_tokens``); ``proxy_finished`` refunds or charges the difference
  to the real usage. A request that never reached an upstream gives everything
  back, its request token included. Passthrough requests reserve no tokens;
* concurrency: ``max_concurrent`` requests in flight (a bucket that never
  refills; the slot is returned in ``proxy_finished``).

A request takes from every bucket it needs or from none. When one is short,
``mode: reject`` answers 429 ``rate_limit_exceeded`` with ``retry-after`` /
``retry-after-ms``; ``mode: queue`` parks the request in one queue ordered by
(-priority, arrival) for up to ``queue.max_wait_ms``, unless its predicted wait
is longer: then it is refused at once.

Every admission sets OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
headers (the most restrictive bucket of each kind; ``reset`` is the time until
it is full again), so they are on 200 and 429 responses alike.

Settings: :class:`~.settings.RateLimitSettings` (``plugins.ratelimit`` in ``docs/configuration.md``).

Parts:

* :mod:`.settings` — the ``plugins.ratelimit`` block and per-scope ``Limits``;
* :mod:`.plan` — which buckets a request needs and how much it takes (:class:`~.plan.Planner`);
* :mod:`.store` — the :class:`~.store.BucketStore` interface, the in-process
  :class:`~.store.MemoryBucketStore` and the degraded :class:`~.store.LocalShareStore`;
* :mod:`.redis_store` — :class:`~.redis_store.RedisBucketStore`, the buckets of a fleet,
  and :mod:`.redis_scripts`, its Lua scripts;
* :mod:`.fleet` — which store the gateway's shared state asks for (memory, or Redis with
  the local share as the fallback), kept across reloads;
* :mod:`.forecast` — predicted waits (what is queued ahead, how long slots are held);
* :mod:`.queue` — the fair priority admission queue and its scans;
* :mod:`.deployments` — each deployment's buckets, limits in force, latency and strategy order;
* :mod:`.placement` — which deployment a request goes to, from one look at the buckets;
* :mod:`.inflight` — a deployment's slots following the attempts (failovers, retries);
* :mod:`.learn` — the provider's ``x-ratelimit-*`` / ``retry-after`` headers;
* :mod:`.adaptive` — AIMD on a deployment's concurrency;
* :mod:`.responses` — the ``x-ratelimit-*`` headers and the 429s;
* :mod:`.plugin` — :class:`RateLimitPlugin`: admission, settlement, store switching.
"""

import proxy

from .plugin import RateLimitPlugin
from .responses import format_duration
from .settings import Limits, QueueSettings, RateLimitSettings, SharedSettings
from .store import BucketStore, LocalShareStore, MemoryBucketStore

__all__ = ["BucketStore", "Limits", "LocalShareStore", "MemoryBucketStore", "QueueSettings", "RateLimitPlugin",
           "RateLimitSettings", "SharedSettings", "floodgate_plugin", "format_duration"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

floodgate_plugin = RateLimitPlugin
"""The rate-limit plugin: plans (which buckets a request needs, how much it takes), admission
(at once, queued or refused), settlement when it ends, the ``x-ratelimit-*`` headers and the 429s."""
