"""Smoke tests of the benchmark harness (bench/): the floor forwarder, the configs, the report maths.

The benchmark itself (``python bench/run.py``) takes minutes; these take a few seconds.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import openai
import orjson
import pytest

import proxy
from bench import configs
from bench.forwarder import create_forwarder_app
from bench.load import stats_ms
from bench.profiles import summarize_profile
from bench.report import overhead_delta
from proxy.config import config_from_dict
from proxy.mock import MockSettings, MockUpstream

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def mock() -> Any:
    settings = MockSettings(models=list(configs.MOCK_MODELS), completion_tokens=12, seed=7)
    async with MockUpstream(settings) as running:
        yield running


async def _sdk(server: Any, stack: list[Any], api_key: str = "sk-bench") -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=api_key, max_retries=0)
    stack.append(client)
    return client


@pytest.fixture
async def sdk_clients() -> Any:
    clients: list[Any] = []
    yield clients
    for client in clients:
        await client.close()


async def test_forwarder_relays_a_completion(aiohttp_server: Any, mock: MockUpstream, sdk_clients: list[Any]) -> None:
    server = await aiohttp_server(create_forwarder_app(mock.url.removesuffix("/v1")))
    client = await _sdk(server, sdk_clients)
    reply = await client.chat.completions.create(model=configs.LOAD_MODEL, messages=MESSAGES)
    assert reply.model == configs.LOAD_MODEL
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content
    assert mock.stats.total == 1 and mock.stats.last is not None
    assert mock.stats.last.body["messages"] == MESSAGES  # the body went through untouched
    # Errors are relayed with their status too.
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)


async def test_forwarder_relays_a_stream_chunk_by_chunk(aiohttp_server: Any, mock: MockUpstream,
                                                        sdk_clients: list[Any]) -> None:
    mock.settings.tokens_per_second = 100.0  # 10 tokens: one every 10 ms
    server = await aiohttp_server(create_forwarder_app(mock.url.removesuffix("/v1")))
    client = await _sdk(server, sdk_clients)
    start = time.perf_counter()
    stream = await client.chat.completions.create(model=configs.LOAD_MODEL, messages=MESSAGES, stream=True,
                                                  max_tokens=10)
    arrivals: list[float] = []
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - start)
            text += chunk.choices[0].delta.content
    assert len(arrivals) == 10
    direct = openai.AsyncOpenAI(base_url=mock.url, api_key="x", max_retries=0)
    sdk_clients.append(direct)
    expected = await direct.chat.completions.create(model=configs.LOAD_MODEL, messages=MESSAGES, max_tokens=10)
    assert text == expected.choices[0].message.content
    # Relayed as they arrive: the first token long before the last (the mock paces them 10 ms apart).
    assert arrivals[-1] - arrivals[0] > 0.05


async def test_bench_configs_are_accepted_by_create_app(tmp_path: Any) -> None:
    for name in configs.CHAIN:
        pytest.importorskip(f"plugins.{name}", reason=f"the {name} plugin is not written yet")
    noplugins = configs.validated(configs.noplugins_config("http://127.0.0.1:9/v1"))
    full = configs.validated(configs.full_config("http://127.0.0.1:9/v1", tmp_path / "usage.db"))
    bare = proxy.create_app(config_from_dict(noplugins))
    # Only the core, and plugins without per-request hooks (the tools: the mock serves builtin:mock,
    # and the tools add their commands to the CLI).
    lifecycle = ("proxy_configure", "proxy_builtin_upstream", "proxy_shutdown", "proxy_add_commands")
    per_request = {i.name for i in bare[proxy.keys.PLUGINS] if any(h not in lifecycle for h in i.hooks)}
    assert per_request <= {"core", "metrics"}
    app = proxy.create_app(config_from_dict(full))
    assert set(configs.CHAIN) <= {i.name for i in app[proxy.keys.PLUGINS]}
    assert len(full["plugins"]["auth"]["keys"]) == 1000 and len(full["plugins"]["faq"]["rules"]) == 200


async def test_full_chain_serves_the_bench_request(aiohttp_server: Any, mock: MockUpstream, tmp_path: Any,
                                                   sdk_clients: list[Any]) -> None:
    for name in configs.CHAIN:
        pytest.importorskip(f"plugins.{name}", reason=f"the {name} plugin is not written yet")
    full = configs.validated(configs.full_config(mock.url, tmp_path / "usage.db"))
    server = await aiohttp_server(proxy.create_app(config_from_dict(full)))
    body = orjson.loads(configs.chat_body())
    client = await _sdk(server, sdk_clients, api_key=configs.load_key())
    raw = await client.chat.completions.with_raw_response.create(**body)
    assert raw.headers["x-floodgate-route"] == "simple"  # classified by the router, default tier
    assert "x-floodgate-short-circuit" not in raw.headers  # no FAQ rule matches the bench prompt
    assert "x-ratelimit-remaining-requests" in raw.headers  # the limiter admitted it
    assert mock.stats.last is not None and mock.stats.last.body["model"] == "deepseek-v3.2"
    wrong = await _sdk(server, sdk_clients, api_key="fg-not-a-bench-key")
    with pytest.raises(openai.AuthenticationError):
        await wrong.chat.completions.create(**body)


def test_overhead_histogram_quantiles() -> None:
    before = ('floodgate_proxy_overhead_seconds_bucket{endpoint="chat/completions",le="0.001"} 10.0\n'
              'floodgate_proxy_overhead_seconds_bucket{endpoint="chat/completions",le="0.005"} 10.0\n'
              'floodgate_proxy_overhead_seconds_bucket{endpoint="chat/completions",le="+Inf"} 10.0\n')
    after = ('floodgate_proxy_overhead_seconds_bucket{endpoint="chat/completions",le="0.001"} 60.0\n'
             'floodgate_proxy_overhead_seconds_bucket{endpoint="chat/completions",le="0.005"} 109.0\n'
             'floodgate_proxy_overhead_seconds_bucket{endpoint="chat/completions",le="+Inf"} 110.0\n'
             'floodgate_proxy_overhead_seconds_bucket{endpoint="models",le="+Inf"} 999.0\n')
    result = overhead_delta(before, after)
    assert result["count"] == 100
    assert result["share_within_5ms"] == pytest.approx(0.99)
    assert result["p50_ms"] == pytest.approx(1.0)  # 50 of 100 within the first bucket
    assert 1.0 < result["p99_ms"] <= 5.0


def test_profile_summary_and_percentiles() -> None:
    raw = ("<module> (bench.py:1);_serve (/x/proxy/pipeline.py:80);proxy_admit (/x/plugins/ratelimit.py:3) 30\n"
           "<module> (bench.py:1);_serve (/x/proxy/pipeline.py:80) 70\n")
    summary = summarize_profile(raw)
    assert summary["samples"] == 100
    inclusive = dict(summary["inclusive_project"])
    assert inclusive == {"proxy/pipeline.py:_serve": 100.0, "plugins/ratelimit.py:proxy_admit": 30.0}
    assert summary["self"][0] == ("proxy/pipeline.py:_serve", 70.0)
    figures = stats_ms([0.003, 0.001, 0.002, 0.004])  # seconds in, milliseconds out, in any order
    assert figures["n"] == 4 and figures["p50"] == pytest.approx(2.5) and figures["max"] == pytest.approx(4.0)
    assert figures["mean"] == pytest.approx(2.5)
    assert stats_ms([]) == {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}


def test_flaky_phase_configs_and_table(tmp_path: Any) -> None:
    from bench import flaky

    for after in (configs.HEDGE_AFTER_MS, "p95"):
        hedged = configs.validated(configs.hedged_config("http://127.0.0.1:9/v1", tmp_path / "usage.db",
                                                         after_ms=after))
        assert hedged["plugins"]["retry"]["hedge"]["routes"] == ["simple"]
        proxy.create_app(config_from_dict(hedged))
    args = flaky.mock_args(0.05, 3000, 0.01)
    assert args.count("--fault") == len(configs.MOCK_MODELS)
    assert "first_token_delay_rate=0.05" in args[args.index("--fault") + 1]
    run = {"ok": 99, "errors": {"no_done": 1}, "ttft_ms": {"p50": 240.0, "p99": 3100.0}}
    table = flaky.render({"rate": 50, "duration_s": 30, "slow_share": 0.05, "slow_ms": 3000, "break_share": 0.01,
                          "latency_ms": 200, "hedge_after_ms": 400, "forwarder": run,
                          "hedged": {**run, "errors": {}, "hedges": 5, "hedge_wins": 4}})
    assert "| bare forwarder | 100 | 1 (1.0%): no_done 1 | 240 ms | 3100 ms | – |" in table
    assert "| Floodgate, hedging after 400 ms | 99 | 0 (0.0%) | 240 ms | 3100 ms | 5 / 4 |" in table


def test_guarded_phases_always_clean_up_and_say_how_they_ended() -> None:
    from bench.procs import guarded

    said: list[str] = []
    cleaned: list[int] = []

    def interrupted() -> None:
        raise KeyboardInterrupt

    def failing() -> None:
        raise RuntimeError("mock did not start")

    assert guarded(lambda: None, lambda: cleaned.append(0), said.append) == 0
    assert guarded(interrupted, lambda: cleaned.append(130), said.append) == 130
    assert guarded(failing, lambda: cleaned.append(1), said.append) == 1
    assert cleaned == [0, 130, 1]
    assert said == ["interrupted: stopping every process started", "error: mock did not start"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two CPUs")
def test_a_child_without_a_cpu_of_its_own_gets_every_cpu_back_while_the_driver_is_pinned(tmp_path: Any) -> None:
    # The driver pins itself to the load generator's CPU; "not pinned" must not mean "inherits that one CPU".
    from bench.procs import Processes

    every = os.sched_getaffinity(0)
    procs = Processes(tmp_path, pin=True)
    show = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
    os.sched_setaffinity(0, {min(every)})
    try:
        assert procs.run(show, None, 30).strip() == str(sorted(every))
        assert procs.run(show, max(every), 30).strip() == str([max(every)])
    finally:
        os.sched_setaffinity(0, every)
