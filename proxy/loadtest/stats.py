"""The figures of a run: percentiles, the latency histogram and :func:`summarize`.

Percentiles use linear interpolation between the closest ranks (numpy's default, Hyndman &
Fan type 7) over successful requests; latencies are measured from the scheduled send.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from proxy.config import Price
from proxy.types import Usage

if TYPE_CHECKING:
    from .client import Sample
    from .runner import LoadTestResult

PERCENTILE_METHOD = "linear interpolation between closest ranks (numpy default, type 7)"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ascending ``sorted_values``.

    Linear interpolation between the closest ranks: rank ``h = (n - 1) * q / 100``, result
    ``x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h])`` (numpy's default).
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    h = (len(sorted_values) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def stats_ms(values: Sequence[float]) -> dict[str, float | int] | None:
    """count/min/avg/p50/p90/p99/max in milliseconds of values in seconds."""
    if not values:
        return None
    xs = sorted(v * 1000.0 for v in values)
    return {"count": len(xs), "min": xs[0], "avg": sum(xs) / len(xs), "p50": percentile(xs, 50),
            "p90": percentile(xs, 90), "p99": percentile(xs, 99), "max": xs[-1]}


# Preferred numbers (ISO 3): log-spaced but readable bucket edges, finest first.
_SERIES = ((1, 1.25, 1.6, 2, 2.5, 3.15, 4, 5, 6.3, 8), (1, 1.6, 2.5, 4, 6.3), (1, 2, 5), (1,))


def histogram(values_ms: Sequence[float], max_rows: int = 16) -> list[tuple[float, float, int]]:
    """Log-scale buckets ``(low, high, count)`` covering ``values_ms`` (``low <= v < high``),
    using the finest preferred-number series that fits in ``max_rows`` rows."""
    if not values_ms:
        return []
    lo, hi = max(min(values_ms), 1e-3), max(max(values_ms), 1e-3)
    first, last = math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1
    for series in _SERIES:
        edges = [round(v * 10.0 ** d, 6) for d in range(first, last + 1) for v in series]
        start = bisect.bisect_right(edges, lo) - 1
        stop = bisect.bisect_right(edges, hi) + 1  # first edge > hi, inclusive
        edges = edges[start:stop]
        if len(edges) - 1 <= max_rows or series == _SERIES[-1]:
            break
    counts = [0] * (len(edges) - 1)
    for v in values_ms:
        counts[min(max(bisect.bisect_right(edges, v) - 1, 0), len(counts) - 1)] += 1
    return [(edges[i], edges[i + 1], c) for i, c in enumerate(counts)]


def _outcome_order(outcome: str) -> tuple[int, str]:
    return (0, outcome.zfill(3)) if outcome.isdigit() else (1, outcome)


def _group(samples: list[Sample], prices: Mapping[str, Price] | None,
           requested: str) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    costs = [c for s in samples if (c := _cost(s, prices, requested)) is not None]
    latency = stats_ms([s.end - s.scheduled for s in ok])
    return {"requests": len(samples), "ok": len(ok),
            "success_rate": len(ok) / len(samples) if samples else 0.0,
            "latency_ms": latency,
            "prompt_tokens": sum(s.prompt_tokens or 0 for s in samples),
            "completion_tokens": sum(s.completion_tokens or 0 for s in samples),
            "cost_usd": sum(costs) if costs else None}


def _cost(sample: Sample, prices: Mapping[str, Price] | None, requested: str) -> float | None:
    """The gateway's figure when it sent one, else usage x catalogue price when known."""
    if sample.header_cost is not None:
        return sample.header_cost
    if prices is None or sample.prompt_tokens is None or sample.completion_tokens is None:
        return None
    price = prices.get(sample.model or requested)
    if price is None:
        return None
    return price.cost(Usage(sample.prompt_tokens, sample.completion_tokens, sample.cached_tokens))


def summarize(result: LoadTestResult) -> dict[str, Any]:
    """All the figures of a run as a JSON-able dict (what ``--json`` writes and the report shows).
    Latency figures are milliseconds over successful requests, measured from the scheduled send."""
    o, samples = result.options, result.samples
    ok = [s for s in samples if s.ok]
    outcomes = Counter(s.outcome for s in samples)
    examples: dict[str, str] = {}
    for s in samples:
        if not s.ok and s.error and s.outcome not in examples:
            examples[s.outcome] = s.error
    lags = [s.sent - s.scheduled for s in samples] if o.mode == "open" else []
    with_usage = [s for s in samples if s.prompt_tokens is not None]
    header_costs = sum(1 for s in samples if s.header_cost is not None)
    costs = [c for s in samples if (c := _cost(s, o.prices, o.model)) is not None]
    elapsed = max(result.elapsed, 1e-9)
    completion_tokens = sum(s.completion_tokens or 0 for s in with_usage)
    by: dict[str, dict[str, list[Sample]]] = {"route": {}, "model": {}}
    for s in samples:
        by["route"].setdefault(s.route or "(none)", []).append(s)
        by["model"].setdefault(s.model or "(none)", []).append(s)
    source = ("x-floodgate-cost-usd" if header_costs == len(costs) else
              f"catalogue prices ({o.prices_source})" if header_costs == 0 else
              f"x-floodgate-cost-usd, else catalogue prices ({o.prices_source})")
    latencies_ms = [(s.end - s.scheduled) * 1000.0 for s in ok]
    return {
        "target": o.endpoint, "mode": o.mode, "rate": o.rate, "concurrency": o.concurrency,
        "duration_s": o.duration, "max_requests": o.requests, "model": o.model,
        "stream": o.stream, "max_tokens": o.max_tokens, "prompts": o.prompts_source,
        "percentile_method": PERCENTILE_METHOD,
        "elapsed_s": result.elapsed, "interrupted": result.interrupted,
        "sent": result.sent, "completed": len(samples), "ok": len(ok),
        "errors": len(samples) - len(ok), "unsent": result.unsent, "abandoned": result.abandoned,
        "success_rate": len(ok) / len(samples) if samples else 0.0,
        "throughput_rps": len(samples) / elapsed, "ok_throughput_rps": len(ok) / elapsed,
        "peak_in_flight": result.peak_in_flight, "max_in_flight": o.max_in_flight,
        "schedule_lag_ms": stats_ms(lags) if lags else None,
        "status_counts": {k: outcomes[k] for k in sorted(outcomes, key=_outcome_order)},
        "error_examples": {k: examples[k] for k in sorted(examples, key=_outcome_order)},
        "latency_ms": stats_ms([s.end - s.scheduled for s in ok]),
        "service_time_ms": stats_ms([s.end - s.sent for s in ok]),
        "ttft_ms": stats_ms([s.first_token - s.scheduled for s in ok
                              if s.first_token is not None]),
        "ttlt_ms": stats_ms([s.last_token - s.scheduled for s in ok
                              if s.last_token is not None]),
        "tokens": {"responses_with_usage": len(with_usage),
                   "prompt": sum(s.prompt_tokens or 0 for s in with_usage),
                   "completion": completion_tokens,
                   "completion_per_s": completion_tokens / elapsed},
        "cost_usd": {"total": sum(costs), "responses": len(costs), "source": source}
        if costs else None,
        "by_route": {k: _group(v, o.prices, o.model) for k, v in sorted(by["route"].items())},
        "by_model": {k: _group(v, o.prices, o.model) for k, v in sorted(by["model"].items())},
        "histogram_ms": [{"low": lo, "high": hi, "count": c}
                         for lo, hi, c in histogram(latencies_ms)],
    }
