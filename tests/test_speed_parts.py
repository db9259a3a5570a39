"""The per-request machinery of issue 13: tallied metrics, the event-loop choice, the
access log's thread, the router's reused targets, the benchmark's peers."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from bench import peers
from proxy.config import config_from_dict
from proxy.errors import ConfigErrors
from proxy.server import loops
from proxy.server.logs import access_log_off_loop
from proxy.tally import CollectedHistogram, InFlight, Tally

BOUNDS = (0.0001, 0.001, 0.01, 0.1, 1.0)
VALUES = (0.0, 0.0001, 0.00011, 0.001, 0.5, 1.0, 2.0, 0.01, 0.0099)


def _lines(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_a_tallied_histogram_exports_what_direct_observations_would():
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    plain = Histogram("h", "h", ["e"], buckets=BOUNDS, registry=direct)
    collected = CollectedHistogram("h", "h", ["e"], buckets=BOUNDS, registry=tallied)
    tally = Tally(direct=False)
    collected.before_collect = tally.flush
    for value in VALUES:  # bucket edges included: a value equal to a bound belongs to it
        plain.labels("a").observe(value)
        tally.observe(collected.labels("a"), value)
    assert tallied.get_sample_value("h_count", {"e": "a"}) == len(VALUES)  # flushed when collected
    assert _lines(direct) == _lines(tallied)
    plain.labels("a").observe(0.05)
    tally.observe(collected.labels("a"), 0.05)  # after a flush: added to what was flushed
    assert _lines(direct) == _lines(tallied)


def test_direct_mode_updates_at_once_and_the_in_flight_count_is_read_when_collected():
    registry = CollectorRegistry()
    hist = Histogram("h", "h", buckets=BOUNDS, registry=registry)
    Tally(direct=True).observe(hist, 0.5)
    assert hist._sum.get() == 0.5
    gauge = Gauge("in_flight", "n", registry=registry)
    count = InFlight(gauge, direct=False)
    count.inc()
    count.inc()
    count.dec()
    assert registry.get_sample_value("in_flight") == 1.0


def test_the_event_loop_setting(monkeypatch):
    assert loops.loop_factory("asyncio") is None
    assert loops.run(asyncio.sleep(0, "done"), "asyncio") == "done"
    if loops.uvloop_installed():
        import uvloop

        assert loops.resolve("auto") == "uvloop"
        assert loops.loop_factory("uvloop") is uvloop.new_event_loop

        async def which() -> str:
            return type(asyncio.get_running_loop()).__module__

        assert loops.run(which(), "auto").startswith("uvloop")
    monkeypatch.setattr(loops.importlib.util, "find_spec", lambda name: None)
    assert loops.resolve("auto") == "asyncio"
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        loops.resolve("uvloop")
    with pytest.raises(ConfigErrors, match="uvloop is not installed"):
        config_from_dict({"server": {"event_loop": "uvloop"}, "upstreams": {"main": {"base_url": "http://x"}}})


def test_access_log_lines_are_written_by_the_listener_and_flushed_at_exit():
    root = logging.getLogger()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    access = logging.getLogger("floodgate.access")
    level = access.level
    root.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with access_log_off_loop():
            assert not access.propagate
            access.info("request_id=%s status=%d", "abc", 200)
        assert out.getvalue() == "request_id=abc status=200\n"
        assert access.propagate and not access.handlers
    finally:
        root.removeHandler(handler)
        access.setLevel(level)


def test_the_compromised_litellm_release_is_refused():
    for version in ("1.82.7", "1.82.8"):
        with pytest.raises(SystemExit, match="compromised"):
            peers.litellm_python(version)
    config = peers.litellm_config("http://127.0.0.1:9/v1")
    assert {m["model_name"] for m in config["model_list"]} >= {"gpt-4o-mini"}
    assert all(m["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1" for m in config["model_list"])
