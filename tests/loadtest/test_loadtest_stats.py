"""Tests of the load tester's figures (proxy/loadtest/stats.py, report.py): percentiles, histogram, summary."""

from __future__ import annotations

import random
import statistics

import pytest

from proxy import loadtest
from proxy.loadtest import LoadTestOptions, format_report, histogram, percentile, summarize


def test_percentile_linear_interpolation() -> None:
    xs = [float(x) for x in range(1, 11)]
    assert percentile(xs, 0) == 1 and percentile(xs, 100) == 10
    assert percentile(xs, 50) == pytest.approx(5.5)
    assert percentile(xs, 90) == pytest.approx(9.1)
    assert percentile(xs, 25) == pytest.approx(3.25)
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 3.0], 50) == 2.0
    # Same definition as statistics.quantiles(method="inclusive") (numpy's default, type 7).
    rng = random.Random(5)
    data = sorted(rng.expovariate(0.1) for _ in range(257))
    reference = statistics.quantiles(data, n=100, method="inclusive")
    for q in (1, 10, 50, 90, 99):
        assert percentile(data, q) == pytest.approx(reference[q - 1])
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_histogram_log_buckets() -> None:
    assert histogram([]) == []
    assert histogram([50.0] * 10) == [(50, 63, 10)]
    buckets = histogram([52.0, 55.0, 70.0, 99.9, 100.0])
    assert [(lo, hi) for lo, hi, _ in buckets] == [(50, 63), (63, 80), (80, 100), (100, 125)]
    assert [c for *_, c in buckets] == [2, 1, 1, 1]  # low <= v < high
    wide = [0.5, 3.0, 40.0, 700.0, 9000.0, 120000.0]
    buckets = histogram(wide, max_rows=16)
    assert len(buckets) <= 16 and sum(c for *_, c in buckets) == len(wide)
    ratios = {round(hi / lo, 6) for lo, hi, _ in buckets}
    assert all(lo < hi for lo, hi, _ in buckets) and len(ratios) <= 3  # log-spaced (1-2-5)
    assert buckets[0][0] <= 0.5 and buckets[-1][1] > 120000


def test_report_of_an_empty_run() -> None:
    opts = LoadTestOptions(rate=5, requests=7, duration=loadtest.MAX_DURATION_S)
    report = format_report(summarize(loadtest.LoadTestResult(opts, [], 0.0, 0)))
    assert "for 7 requests (at most 3600 s)" in report
    assert "(no response)" in report and "(no successful request)" in report
    assert "by route" not in report and "histogram" not in report and "\ncost" not in report
