"""The fleet benchmark's harness (bench/fleet.py) without running it: its options and its report."""

from __future__ import annotations

from bench import fleet


def _closed(rps: float, cpu: float, redis_cpu: float = 0.0, calls: float = 0.0) -> dict:
    return {"rps": rps, "p99_ms": 50.0, "cpu_us_per_req": cpu, "redis_cpu_us_per_req": redis_cpu,
            "redis_calls_per_req": calls}


def _stream(p99: float) -> dict:
    return {"ok": 100, "errors": {}, "unsent": 0, "ttft_ms": {"p50": 200.0, "p99": p99}, "cpu_us_per_req": 900.0,
            "redis_cpu_us_per_req": 100.0}


def test_the_report_compares_each_variant_with_the_forwarder_and_memory_with_redis():
    rounds = [{"forwarder": _closed(2000, 250), "1w memory": _closed(1000, 600),
               "1w redis": _closed(800, 700, 150, 0.5), "2w redis": _closed(900, 800, 160, 0.6)}]
    latency = [{t: {"latency_ms": {"p50": p50, "p99": 5.0}} for t, p50 in
                (("forwarder", 1.0), ("1w memory", 1.5), ("1w redis", 2.5))}]
    text = fleet.render({"throughput": {"concurrency": 64, "duration_s": 10, "rounds": rounds},
                         "latency": {"requests": 1000, "rounds": latency},
                         "festival": {"rate": 500, "duration_s": 60, "forwarder": _stream(210.0),
                                      "2w redis": {**_stream(215.0), "overhead": {"p99_ms": 1.0}}}})
    assert "  1w redis         800    0.40    50.00         700           150            0.50" in text
    assert "Redis state's added gateway CPU per request (1w redis − 1w memory): +100 µs" in text
    assert "1w redis     p50 2.500 ms  p99 5.000 ms  added p50 +1.500 ms" in text
    assert "TTFT p99 over the forwarder +5.0 ms, proxy overhead p99 1.00 ms" in text
    assert "per stream" not in text  # the festival ran without both one-process variants
    text = fleet.render({"festival": {"rate": 500, "duration_s": 60, "forwarder": _stream(210.0),
                                      "1w memory": {**_stream(211.0), "cpu_us_per_req": 1100.0},
                                      "1w redis": {**_stream(214.0), "cpu_us_per_req": 1250.0}}})
    assert "Redis state's added gateway CPU per stream at 500/s (1w redis − 1w memory): +150 µs" in text


def test_options_default_to_a_full_run_and_quick_shortens_it():
    full, quick = fleet.parse_args([]), fleet.parse_args(["--quick"])
    assert (full.rounds, full.duration, full.festival_duration, full.festival_rate) == (2, 10.0, 60.0, 500.0)
    assert (quick.rounds, quick.duration, quick.festival_duration) == (1, 3.0, 10.0)
    assert full.festival_targets == "2w redis" and set(fleet.VARIANTS) == {"1w memory", "1w redis", "2w redis"}
