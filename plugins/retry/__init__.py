"""Retry, fallback and circuit breakers: the ``retry`` plugin.

Implements ``proxy_next_attempt``: walk the route's targets in order; retry a
target on transient failures (429, 500, 502, 503, 504, connection errors,
invalid bodies and, if ``retry_on_timeout``, timeouts and stalls) with exponential backoff
and full jitter, honouring the upstream's ``Retry-After`` up to
``max_retry_after_s`` (a longer one moves on to the next target at once); then
fall back to the route's next target. A timeout or a stall moves on at once by
default. Other 4xx statuses stop at once: the core relays them to the client.
Other 5xx move on without a retry. A protocol error (an answer of the wrong
kind, e.g. no SSE stream for a stream request) is deterministic: never retried,
never counted against the breaker, and only a target on another upstream is
tried after it; else the client gets a 502 with ``x-should-retry: false``.

One deadline per request (``deadline_s``, counted from the first attempt; time
spent in admission queues is bounded by those plugins) bounds every attempt and
every wait: no delay ends past it, and each attempt's timeouts are capped at the
time left. Breakers and the deadline run on the plugin's :class:`proxy.Clock`.

A model with several deployments (catalogue ``deployments``) fails over among them
first: a retryable failure moves at once to the model's next deployment this request
has not tried — unless another plugin says it has no room (``proxy_unavailable``: the
rate limiter's full or throttled deployments) — before the same one is retried with
backoff, and before the route's next model.

Each target (catalogue model, or one deployment of it: ``model@deployment``) has a
circuit breaker. It opens after
``breaker.failures`` consecutive failures, or when the failure ratio over a
rolling window reaches ``breaker.failure_ratio`` (with at least
``breaker.min_requests`` outcomes in the window). While open the target is
skipped; the first request after ``breaker.cooldown_s`` half-opens it and is its
one probe (concurrent requests keep skipping it); the probe's success closes it,
its failure re-opens it for another cooldown. When every target of a route is
open the request gets 503 ``upstream_unavailable`` with ``retry-after``.

Only outcomes that say something about the target's health count: 5xx,
timeouts, stalls, connection errors, invalid bodies and — by default
(``breaker.trip_on_429``) — a model's 429, because a target that keeps rate-limiting
the gateway is unusable for its traffic until it recovers, which is what the breaker
models. A deployment's 429s never count: the rate limiter follows them (its
``retry-after``, the provider's limits, adaptive concurrency). Any other 4xx is the
request's fault and counts as a success (the target answered). A timeout of an
attempt the deadline left with less than half the usual time counts for nothing.

Streams: the core asks for another attempt only before the stream is
committed (its first meaningful event sent), so a stream that broke after
content is never retried; one that broke after its role chunk is.

Hedging (opt-in per model or route, ``hedge``): an attempt with no meaningful
answer after ``hedge.after_ms`` (or the model's recent p95) is raced by a second
one — the route's next target or the same model again — the first to answer
wins; at most ``hedge.max_ratio`` hedges per request, none while any plugin says
it is overloaded (``proxy_overloaded``, asked by the core).

Settings: :class:`~.settings.RetrySettings` (``plugins.retry`` in ``docs/configuration.md``).

Parts:

* :mod:`.settings` — the ``plugins.retry`` block;
* :mod:`.breaker` — :class:`~.breaker.Breaker`, the circuit breaker of one target;
* :mod:`.health` — every target's breaker (per deployment), the per-request bookkeeping;
* :mod:`.hedge` — :class:`~.hedge.HedgePolicy`: when to hedge, the p95 windows, the budget;
* :mod:`.fleet` — the breakers kept across reloads; with Redis state, mirrors of the fleet's
  breakers (:mod:`.shared`: their scripts), one half-open probe fleet-wide;
* :mod:`.plugin` — :class:`RetryPlugin`: the attempt policy, the deadline and
  the breakers' bookkeeping.
"""

import proxy

from .plugin import RetryPlugin
from .settings import BreakerSettings, HedgeSettings, ModelOverrides, RetrySettings

__all__ = ["BreakerSettings", "HedgeSettings", "ModelOverrides", "RetryPlugin", "RetrySettings",
           "floodgate_plugin"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

floodgate_plugin = RetryPlugin
