"""The core's Prometheus metrics, in a registry that belongs to one application.

Label children are cached per label tuple: ``.labels()`` takes a lock and
builds a key on every call, which is measurable on the hot path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .hookspecs import hookimpl
from .types import AttemptRecord, EndpointKind, RequestContext

# Proxy overhead is sub-millisecond when healthy: fine buckets at the low end.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class LabelCache:
    """``metric.labels(*values)`` memoised per tuple of label values."""

    __slots__ = ("_metric", "_children")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class CoreMetrics:
    """Requests, durations, overhead, upstream time, TTFT and in-flight requests.

    Registered as the ``metrics`` plugin: it observes every finished request.
    """

    name = "metrics"

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = LabelCache(Counter(
            "floodgate_requests", "Requests by endpoint, model and HTTP status",
            ["endpoint", "model", "status"], registry=registry))
        self.duration = LabelCache(Histogram(
            "floodgate_request_duration_seconds", "Time from request received to response done",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry))
        self.overhead = LabelCache(Histogram(
            "floodgate_proxy_overhead_seconds", "Time the proxy added: total minus upstream time",
            ["endpoint"], buckets=OVERHEAD_BUCKETS, registry=registry))
        self.upstream = LabelCache(Histogram(
            "floodgate_upstream_duration_seconds", "Duration of each upstream attempt",
            ["upstream", "model", "outcome"], buckets=LATENCY_BUCKETS, registry=registry))
        self.ttft = LabelCache(Histogram(
            "floodgate_time_to_first_token_seconds", "Streams: time from request received to the commit "
            "(the first meaningful event sent to the client)", ["model"], buckets=LATENCY_BUCKETS, registry=registry))
        self.first_event = LabelCache(Histogram(
            "floodgate_upstream_first_event_seconds", "Streams: time from sending an attempt to its first "
            "meaningful event (content, a tool call, a refusal or a finish)",
            ["model"], buckets=LATENCY_BUCKETS, registry=registry))
        self.stalls = LabelCache(Counter(
            "floodgate_stream_stalls", "Streams whose upstream went silent for longer than the stall timeout, "
            "before the commit (failed over) or after it (ended with an error event)",
            ["model", "phase"], registry=registry))
        self.discarded = LabelCache(Counter(
            "floodgate_stream_held_events_discarded", "Events held before the commit and discarded because "
            "the attempt failed", ["model"], registry=registry))
        self.hedges = LabelCache(Counter(
            "floodgate_hedges", "Hedged attempts sent (raced against a slow attempt of the same request)",
            ["model"], registry=registry))
        self.hedge_wins = LabelCache(Counter(
            "floodgate_hedge_wins", "Hedged attempts that answered first", ["model"], registry=registry))
        self.in_flight = Gauge("floodgate_in_flight_requests", "Requests being handled now", registry=registry)
        self.loop_lag = Histogram(
            "floodgate_event_loop_lag_seconds", "How late the event loop ran a timer due now: time requests "
            "wait before any handler runs, which the overhead histogram cannot see",
            buckets=OVERHEAD_BUCKETS, registry=registry)

    async def watch_loop_lag(self, interval: float = 0.25) -> None:
        """Sample the event loop's lag every ``interval`` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - due))

    @hookimpl(trylast=True)
    def proxy_finished(self, ctx: RequestContext) -> None:
        target = ctx.target
        model = target.model if target else (ctx.model if ctx.model and ctx.config.resolve(ctx.model) else "-")
        # Bounded label values: passthrough paths and admin endpoints are counted by kind.
        endpoint = ctx.endpoint if ctx.kind is EndpointKind.MODEL else ctx.kind.value
        self.requests(endpoint, model, str(ctx.status)).inc()
        self.duration(endpoint).observe(ctx.timings.total)
        self.overhead(endpoint).observe(ctx.timings.overhead)
        for attempt in ctx.attempts:
            model = attempt.target.model
            outcome = "ok" if attempt.ok else attempt.error or "error"
            self.upstream(attempt.target.upstream, model, outcome).observe(attempt.duration)
            if ctx.stream:
                self._stream_attempt(model, attempt)
            if attempt.hedge:
                self.hedges(model).inc()
                if attempt.committed:
                    self.hedge_wins(model).inc()
        if ctx.stream and ctx.timings.first_byte is not None and target is not None:
            self.ttft(target.model).observe(ctx.timings.first_byte - ctx.timings.received)

    def _stream_attempt(self, model: str, attempt: AttemptRecord) -> None:
        if attempt.first_event is not None:
            self.first_event(model).observe(attempt.first_event - attempt.started)
        if attempt.error == "stall":
            self.stalls(model, "after_commit" if attempt.committed else "before_commit").inc()
        if attempt.discarded:
            self.discarded(model).inc(attempt.discarded)
