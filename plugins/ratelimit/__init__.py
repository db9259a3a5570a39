"""Token-bucket rate limiting with a priority queue (the ``ratelimit`` plugin).

Limits apply per *scope*: ``global`` (all traffic), ``key`` (per principal:
``per_key`` defaults, overridden by ``principal.settings["rate_limit"]``),
``model`` (the catalogue model of the route's first target) and ``upstream``
(the upstream of that target). Each scope may limit three things:

* requests: ``requests_per_second`` with a ``burst`` (bucket capacity);
* tokens: ``tokens_per_minute``. Admission reserves the estimated prompt plus
  the requested maximum output (``max_tokens`` / ``max_completion_tokens`` /
  ``max_output_tokens``, the route target's overrides winning, else
  ``default_max_tokens``); ``proxy_finished`` refunds or charges the difference
  to the real usage. A request that never reached an upstream gives everything
  back, its request token included;
* concurrency: ``max_concurrent`` requests in flight (a bucket that never
  refills; the slot is returned in ``proxy_finished``).

A request takes from every bucket it needs or from none. When one is short,
``mode: reject`` answers 429 ``rate_limit_exceeded`` with ``retry-after`` /
``retry-after-ms``; ``mode: queue`` parks the request in one queue ordered by
(-priority, arrival) for up to ``queue.max_wait_ms``. Waiting is event driven:
one timer for the whole queue, set to when the first blocked waiter's buckets
will have refilled (deficit / rate), plus a wake-up whenever a request ends and
gives something back. Waiters only queue behind earlier waiters blocked on a
bucket they also need, so one saturated key does not stall the others.

Every admission sets OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
headers (the most restrictive bucket of each kind; ``reset`` is the time until
it is full again), so they are on 200 and 429 responses alike.

Parts:

* :mod:`.settings` — the ``plugins.ratelimit`` block and per-key ``Limits``;
* :mod:`.store` — the :class:`~.store.BucketStore` protocol and the in-process
  :class:`~.store.MemoryBucketStore`;
* :mod:`.queue` — the fair priority admission queue and its timer scan;
* :mod:`.plugin` — :class:`RateLimitPlugin`: plans, admission, settlement,
  headers and rejections.
"""

import proxy

from .plugin import RateLimitPlugin, format_duration
from .settings import Limits, QueueSettings, RateLimitSettings

__all__ = ["Limits", "QueueSettings", "RateLimitPlugin", "RateLimitSettings", "floodgate_plugin", "format_duration"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

floodgate_plugin = RateLimitPlugin
