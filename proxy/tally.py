"""Per-request metric updates as plain numbers, written into Prometheus when collected.

Every ``Counter.inc`` and ``Histogram.observe`` of prometheus-client takes a lock and
runs a few Python calls; the core makes about six of them per request. In one process,
:class:`Tally` adds to plain dicts instead (a histogram's bucket is found with
``bisect``) and :meth:`Tally.flush` hands the sums to the metric objects when they are
collected (a ``/metrics`` scrape, ``registry.get_sample_value``): what is exported is
the same, to the request. With worker processes (``PROMETHEUS_MULTIPROC_DIR``) the
values live in files that another worker's scrape reads, so every update goes straight
through, as before.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

#: Set (to a directory) in worker processes: metric values live in files there, one set per process.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def collected_here() -> bool:
    """Whether this process's own ``collect()`` produces what ``/metrics`` exports (no worker
    processes: without ``PROMETHEUS_MULTIPROC_DIR``, where values are read from files)."""
    return not os.environ.get(MULTIPROC_ENV)


class Tally:
    """Pending counter increments and histogram observations, by metric child."""

    __slots__ = ("direct", "_counts", "_observed")

    def __init__(self, *, direct: bool) -> None:
        self.direct = direct
        self._counts: dict[Any, float] = {}
        self._observed: dict[Any, list[float]] = {}  # child -> its buckets' counts, then the sum

    def inc(self, child: Any, amount: float = 1.0) -> None:
        if self.direct:
            child.inc(amount)
            return
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + amount

    def observe(self, child: Any, value: float) -> None:
        if self.direct:
            child.observe(value)
            return
        pending = self._observed.get(child)
        bounds = child._upper_bounds
        if pending is None:
            pending = self._observed[child] = [0.0] * (len(bounds) + 1)
        pending[bisect_left(bounds, value)] += 1  # the first bound >= value, as observe() finds it
        pending[-1] += value

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, pending in observed.items():
            buckets = child._buckets
            for i in range(len(buckets)):
                if pending[i]:
                    buckets[i].inc(pending[i])
            child._sum.inc(pending[-1])


class InFlight:
    """Requests being handled now: a plain count the gauge reads when collected (one process),
    else the gauge's own (multiprocess) value."""

    __slots__ = ("_gauge", "_direct", "value")

    def __init__(self, gauge: Gauge, *, direct: bool) -> None:
        self._gauge = gauge
        self._direct = direct
        self.value = 0
        if not direct:
            gauge.set_function(lambda: self.value)

    def inc(self) -> None:
        if self._direct:
            self._gauge.inc()
        else:
            self.value += 1

    def dec(self) -> None:
        if self._direct:
            self._gauge.dec()
        else:
            self.value -= 1


class _BeforeCollect:
    """Runs ``before_collect`` (set after construction) each time the metric is collected."""

    before_collect: Callable[[], None] | None = None

    def collect(self) -> Any:
        if self.before_collect is not None:
            self.before_collect()
        return super().collect()  # type: ignore[misc]


class CollectedCounter(_BeforeCollect, Counter):
    """A counter brought up to date when collected (e.g. a :class:`Tally` flushed)."""


class CollectedHistogram(_BeforeCollect, Histogram):
    """A histogram brought up to date when collected (e.g. a :class:`Tally` flushed)."""


class CollectedGauge(_BeforeCollect, Gauge):
    """A gauge computed when collected (``proxy.CollectedGauge``): values that change with every
    request but are read only by scrapes need not be set by every request. With worker processes
    the values live in files another worker reads: set them as they change there instead
    (:meth:`collected_here` says which)."""

    collected_here = staticmethod(collected_here)
