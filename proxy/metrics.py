"""The core's Prometheus metrics, in a registry that belongs to one application.

Label children are cached per label tuple: ``.labels()`` takes a lock and
builds a key on every call, which is measurable on the hot path. The per-request
counts go through a :class:`~proxy.tally.Tally` (plain numbers until collected).

:class:`MetricsRegistry` keeps metrics continuous across configuration reloads;
:func:`exposition` renders ``/metrics`` — this process's registry, or with
worker processes (``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor) the
values every worker of the host wrote to that directory.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector, DuplicateTimeseries

from .hookspecs import hookimpl
from .tally import MULTIPROC_ENV, CollectedCounter, CollectedHistogram, InFlight, Tally, collected_here
from .types import AttemptRecord, EndpointKind, RequestContext

__all__ = ["MULTIPROC_ENV", "CoreMetrics", "LabelCache", "MetricsRegistry", "exposition"]

#: What makes two metric objects the same series family: then one takes over the other's values.
_IDENTITY = ("_type", "_name", "_labelnames", "_documentation", "_unit", "_upper_bounds", "_multiprocess_mode",
             "_states")

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
        # Every request's counts: plain numbers until collected (one process; see proxy.tally).
        self.tally = tally = Tally(direct=not collected_here())
        requests = CollectedCounter(
            "floodgate_requests", "Requests by endpoint, model and HTTP status",
            ["endpoint", "model", "status"], registry=registry)
        duration = CollectedHistogram(
            "floodgate_request_duration_seconds", "Time from request received to response done",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        overhead = CollectedHistogram(
            "floodgate_proxy_overhead_seconds", "Time the proxy added: total minus upstream time",
            ["endpoint"], buckets=OVERHEAD_BUCKETS, registry=registry)
        upstream = CollectedHistogram(
            "floodgate_upstream_duration_seconds", "Duration of each upstream attempt",
            ["upstream", "model", "outcome"], buckets=LATENCY_BUCKETS, registry=registry)
        requests.before_collect = duration.before_collect = overhead.before_collect = tally.flush
        upstream.before_collect = tally.flush
        self.requests = LabelCache(requests)
        self.duration = LabelCache(duration)
        self.overhead = LabelCache(overhead)
        self.upstream = LabelCache(upstream)
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
        self.in_flight = InFlight(Gauge("floodgate_in_flight_requests", "Requests being handled now",
                                        registry=registry, multiprocess_mode="livesum"), direct=tally.direct)
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

    @staticmethod
    def model_label(ctx: RequestContext, model: str | None) -> str:
        """A bounded label: an exact catalogue model, the pattern serving a name (a name a
        pattern serves is client-chosen: it must not mint series), or ``-``."""
        if not model:
            return "-"
        config = ctx.config
        return model if model in config.models else config.catalogue_name(model) or "-"

    @hookimpl(trylast=True)
    def proxy_finished(self, ctx: RequestContext) -> None:
        target = ctx.target
        model = self.model_label(ctx, target.model if target else ctx.model)
        # Bounded label values: passthrough paths and admin endpoints are counted by kind.
        endpoint = ctx.endpoint if ctx.kind is EndpointKind.MODEL else ctx.kind.value
        tally = self.tally
        tally.inc(self.requests(endpoint, model, str(ctx.status)))
        tally.observe(self.duration(endpoint), ctx.timings.total)
        tally.observe(self.overhead(endpoint), ctx.timings.overhead)
        for attempt in ctx.attempts:
            model = self.model_label(ctx, attempt.target.model)
            outcome = "ok" if attempt.ok else attempt.error or "error"
            tally.observe(self.upstream(attempt.target.upstream, model, outcome), attempt.duration)
            if ctx.stream:
                self._stream_attempt(model, attempt)
            if attempt.hedge:
                self.hedges(model).inc()
                if attempt.committed:
                    self.hedge_wins(model).inc()
        if ctx.stream and ctx.timings.first_byte is not None and target is not None:
            self.ttft(self.model_label(ctx, target.model)).observe(ctx.timings.first_byte - ctx.timings.received)

    def _stream_attempt(self, model: str, attempt: AttemptRecord) -> None:
        if attempt.first_event is not None:
            self.first_event(model).observe(attempt.first_event - attempt.started)
        if attempt.error == "stall":
            self.stalls(model, "after_commit" if attempt.committed else "before_commit").inc()
        if attempt.discarded:
            self.discarded(model).inc(attempt.discarded)


class MetricsRegistry(CollectorRegistry):
    """The application's registry; it outlives configuration reloads.

    The core's and the shared state's metrics are registered here directly. Each
    generation's plugins register theirs in a staging registry (:meth:`stage`: a
    name twice within one generation is still an error), which :meth:`commit`
    makes the exported set. A staged metric that the current generation has too
    (same name, type, labels, help and buckets) takes over that metric's storage —
    its children and values are then the same objects — so counters continue
    across a reload, and the old generation's in-flight requests still count.
    """

    def __init__(self) -> None:
        super().__init__()
        self._generation: set[Collector] = set()

    def stage(self) -> CollectorRegistry:
        """A registry for the plugins of a generation being built."""
        return _Staged(self)

    def commit(self, staged: CollectorRegistry) -> None:
        """Export ``staged``'s metrics instead of the current generation's."""
        for collector in self._generation:
            self.unregister(collector)
        collectors = set(staged._collector_to_names)
        for collector in collectors:
            self.register(collector)
        self._generation = collectors

    def adopt(self, collector: Collector) -> None:
        """Give ``collector`` the storage of the current generation's metric of the same name."""
        names = self._get_names(collector)
        current = {self._names_to_collectors[n] for n in names if n in self._names_to_collectors}
        if not current:
            return
        old = current.pop()
        if current or old not in self._generation:  # a clash with the core's own metrics: a real duplicate
            raise DuplicateTimeseries(set(names) & set(self._names_to_collectors))
        if _same_family(old, collector):
            collector.__dict__.update({k: v for k, v in old.__dict__.items() if k != "_child_samples"})


class _Staged(CollectorRegistry):
    def __init__(self, live: MetricsRegistry) -> None:
        super().__init__()
        self._live = live

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self._live.adopt(collector)


def _same_family(old: Collector, new: Collector) -> bool:
    return (isinstance(old, MetricWrapperBase) and type(old) is type(new)
            and all(getattr(old, a, None) == getattr(new, a, None) for a in _IDENTITY))


def exposition(registry: CollectorRegistry) -> bytes:
    """The ``/metrics`` body: the whole host's when worker processes share a metrics directory."""
    if os.environ.get(MULTIPROC_ENV):
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged)
    return generate_latest(registry)
