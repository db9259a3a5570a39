"""Tests of ``floodgate loadtest`` runs (proxy/loadtest/: cli, runner, client) against the mock upstream
over real sockets."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy import loadtest
from proxy.cli import main
from proxy.loadtest import (
    LoadTestCommands,
    LoadTestOptions,
    UsageError,
    add_arguments,
    format_report,
    options_from_args,
    run_loadtest,
    summarize,
)
from proxy.mock import MockSettings, MockUpstream, count_tokens

KEY = "sk-loadtest-key"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="floodgate loadtest")
    add_arguments(p)
    return p


def options(*argv: str) -> LoadTestOptions:
    return options_from_args(parser().parse_args(argv))


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(MockSettings(seed=3, api_key=KEY)) as m:
        m.set_behaviour("auto", latency_ms=50)
        yield m


def test_loadtest_command_comes_from_its_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    """``floodgate loadtest`` is added by LoadTestCommands (an entry point), not by the core CLI."""
    top = argparse.ArgumentParser(prog="floodgate")
    LoadTestCommands().proxy_add_commands(top.add_subparsers())
    args = top.parse_args(["loadtest", "--rate", "5"])
    assert args.func is loadtest.run and args.rate == 5.0
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "loadtest" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["loadtest", "--help"])
    assert exc.value.code == 0 and "--concurrency" in capsys.readouterr().out


def test_cli_validation(prompt_file: Callable[..., str], capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["--rate", "5", "--concurrency", "2"], ["--rate", "0"],
                 ["--rate", "5", "--duration", "3601"], ["--concurrency", "0"],
                 ["--rate", "x"], ["--rate", "5", "--requests", "0"],
                 ["--rate", "5", "--header", "no-colon"]):
        with pytest.raises(SystemExit):
            parser().parse_args(argv)
    opts = options("--rate", "5", "--requests", "7")
    assert opts.duration == loadtest.MAX_DURATION_S and opts.requests == 7  # hard cap on time
    assert options("--concurrency", "2").duration == loadtest.DEFAULT_DURATION_S
    with pytest.raises(UsageError, match="http"):
        options("--rate", "5", "--url", "ftp://x")
    bad = prompt_file({"prompt": 1})
    assert loadtest.run(parser().parse_args(["--rate", "5", "--prompts", bad])) == 2
    assert f"{bad}:1:" in capsys.readouterr().err


# --------------------------------------------------------------------------- against the mock

@pytest.mark.e2e  # a load run against the mock: timing-heavy
async def test_open_loop_fixed_latency(mock: MockUpstream) -> None:
    opts = options("--url", mock.url, "--key", KEY, "--rate", "40", "--duration", "1.5")
    result = await run_loadtest(opts)
    s = summarize(result)
    assert 58 <= s["sent"] <= 62 and s["completed"] == s["sent"] == mock.stats.total
    assert s["status_counts"] == {"200": s["sent"]} and s["success_rate"] == 1.0
    lat = s["latency_ms"]
    assert lat["min"] >= 50.0
    assert 50.0 <= lat["p50"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert s["schedule_lag_ms"] is not None and s["unsent"] == 0
    last = mock.stats.last
    assert last.headers["Authorization"] == f"Bearer {KEY}"
    assert last.body["model"] == "auto" and "stream" not in last.body
    assert last.body["messages"][0]["role"] == "system"  # the built-in mix


@pytest.mark.e2e  # a load run against the mock: timing-heavy
async def test_open_loop_does_not_wait_for_a_slow_server(mock: MockUpstream) -> None:
    mock.set_behaviour("auto", latency_ms=300)
    result = await run_loadtest(options("--url", mock.url, "--key", KEY, "--rate", "20",
                                        "--duration", "0.5"))
    s = summarize(result)
    assert s["sent"] == 10 and s["ok"] == 10
    assert result.peak_in_flight >= 5  # new requests went out while earlier ones were pending
    assert s["latency_ms"]["min"] >= 300.0


@pytest.mark.e2e  # a load run against the mock: timing-heavy
async def test_pool_queueing_counts_as_latency(mock: MockUpstream) -> None:
    mock.set_behaviour("auto", latency_ms=100)
    result = await run_loadtest(options("--url", mock.url, "--key", KEY, "--rate", "20",
                                        "--duration", "0.3", "--max-in-flight", "1"))
    s = summarize(result)
    assert s["ok"] == 6 and result.peak_in_flight > 1  # queued for the single connection
    assert s["latency_ms"]["max"] >= 300.0  # last due at 250 ms, served after 5 x 100 ms
    assert "connection pool full" in format_report(s)


@pytest.mark.e2e  # a load run against the mock: timing-heavy
async def test_generator_lag_counts_as_latency(mock: MockUpstream) -> None:
    """A stalled generator: requests go out late, and the delay shows up in the latency
    (measured from the schedule) rather than being hidden (coordinated omission)."""
    mock.set_behaviour("auto", latency_ms=20)

    async def stall() -> None:
        await asyncio.sleep(0.2)
        time.sleep(0.25)  # noqa: ASYNC251 - block the event loop, as a CPU-starved generator would be

    staller = asyncio.create_task(stall())
    result = await run_loadtest(options("--url", mock.url, "--key", KEY, "--rate", "50",
                                        "--duration", "0.6"))
    await staller
    s = summarize(result)
    assert s["sent"] == 30 and s["ok"] == 30  # caught up: nothing skipped
    assert s["schedule_lag_ms"]["max"] >= 150.0
    assert s["latency_ms"]["max"] >= 150.0 + 20.0
    assert s["service_time_ms"]["max"] < s["latency_ms"]["max"]
    assert "generator fell BEHIND" in format_report(s)


@pytest.mark.e2e  # a load run against the mock: timing-heavy
async def test_closed_loop_throughput(mock: MockUpstream) -> None:
    result = await run_loadtest(options("--url", mock.url, "--key", KEY, "--concurrency", "4",
                                        "--duration", "1"))
    s = summarize(result)
    assert result.peak_in_flight == 4 and s["errors"] == 0
    assert 40.0 <= s["throughput_rps"] <= 4 / 0.05 * 1.05
    assert s["latency_ms"]["min"] >= 50.0 and s["schedule_lag_ms"] is None
    assert s["completed"] == mock.stats.total


async def test_requests_bound_first(mock: MockUpstream) -> None:
    result = await run_loadtest(options("--url", mock.url, "--key", KEY, "--concurrency", "3",
                                        "--requests", "7", "--duration", "30"))
    assert result.sent == 7 == len(result.samples) == mock.stats.total
    assert not result.interrupted and result.elapsed < 30  # ended by the count, not the 30 s duration


async def test_stream_ttft_and_exact_tokens(mock: MockUpstream, prompt_file: Callable[..., str]) -> None:
    mock.set_behaviour("auto", latency_ms=20, tokens_per_second=100, completion_tokens=10)
    path = prompt_file({"prompt": "hello world 你好"})
    opts = options("--url", mock.url, "--key", KEY, "--concurrency", "2", "--requests", "6",
                   "--stream", "--max-tokens", "50", "--prompts", path)
    s = summarize(await run_loadtest(opts))
    assert s["status_counts"] == {"200": 6}
    body = mock.stats.last.body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 50
    prompt_tokens = 4 + count_tokens("hello world 你好")
    assert s["tokens"] == {"responses_with_usage": 6, "prompt": 6 * prompt_tokens,
                           "completion": 60, "completion_per_s": pytest.approx(
                               60 / s["elapsed_s"])}
    ttft, ttlt, total = s["ttft_ms"], s["ttlt_ms"], s["latency_ms"]
    assert ttft["count"] == ttlt["count"] == 6
    assert 20.0 + 10.0 <= ttft["min"] and ttft["max"] < total["min"]
    assert ttlt["p50"] >= ttft["p50"] + 80.0  # 9 more tokens at 100/s
    assert ttlt["max"] <= total["max"]


async def test_error_statuses_counted(mock: MockUpstream) -> None:
    mock.set_behaviour("auto", fail_first=3, error_status=503)
    s = summarize(await run_loadtest(options("--url", mock.url, "--key", KEY,
                                             "--concurrency", "1", "--requests", "10")))
    assert s["status_counts"] == {"200": 7, "503": 3}
    assert s["ok"] == 7 and s["errors"] == 3 and s["success_rate"] == pytest.approx(0.7)
    assert "503 Service Temporarily Unavailable" in s["error_examples"]["503"]
    assert s["latency_ms"]["count"] == 7  # latency figures are over successes only
    report = format_report(s)
    assert "503" in report and "70.0%" in report


async def test_wrong_key_and_stream_errors(mock: MockUpstream) -> None:
    s = summarize(await run_loadtest(options("--url", mock.url, "--key", "sk-wrong",
                                             "--concurrency", "1", "--requests", "2")))
    assert s["status_counts"] == {"401": 2} and "Incorrect API key" in s["error_examples"]["401"]
    mock.set_behaviour("auto", break_stream_after=2)
    s = summarize(await run_loadtest(options("--url", mock.url, "--key", KEY, "--stream",
                                             "--concurrency", "1", "--requests", "2")))
    assert s["ok"] == 0 and set(s["status_counts"]) <= {"truncated_response",
                                                        "incomplete_stream"}
    mock.set_behaviour("auto", malformed=True)
    s = summarize(await run_loadtest(options("--url", mock.url, "--key", KEY,
                                             "--concurrency", "1", "--requests", "2")))
    assert s["status_counts"] == {"invalid_response": 2}


async def test_client_side_errors_are_named(mock: MockUpstream) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = summarize(await run_loadtest(options("--url", f"http://127.0.0.1:{port}/v1",
                                             "--concurrency", "1", "--requests", "3")))
    assert s["status_counts"] == {"connection_refused": 3} and s["ok"] == 0
    mock.set_behaviour("auto", hang=True)
    s = summarize(await run_loadtest(options("--url", mock.url, "--key", KEY, "--rate", "10",
                                             "--requests", "2", "--timeout", "0.3")))
    assert s["status_counts"] == {"timeout": 2}
    assert "timeout" in format_report(s)


@pytest.mark.e2e  # a load run against the mock: timing-heavy
async def test_interrupt_abandons_in_flight(mock: MockUpstream) -> None:
    mock.set_behaviour("auto", latency_ms=5000)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    result = await run_loadtest(options("--url", mock.url, "--key", KEY, "--rate", "20",
                                        "--duration", "10"), stop=stop)
    assert result.elapsed < 5.0  # it did not wait for the 5 s answers it abandoned
    assert result.interrupted and result.abandoned == result.sent >= 5
    assert "INTERRUPTED" in format_report(summarize(result))


@pytest.mark.e2e  # a load run against the mock: timing-heavy
async def test_progress_line(mock: MockUpstream) -> None:
    out = io.StringIO()
    await run_loadtest(options("--url", mock.url, "--key", KEY, "--rate", "20",
                               "--duration", "0.6"), progress=out)
    text = out.getvalue()
    assert text.count("\r") >= 3 and "sent " in text and "ok " in text and "resp/s" in text
    assert text.endswith("\r\x1b[K")  # the line is cleared before the report


# --------------------------------------------------------------------------- gateway headers

@pytest.fixture
async def fake_gateway(aiohttp_server: Any) -> Any:
    """Answers like a Floodgate gateway: FAQ hits short-circuit, the rest routed and priced."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        if "营业时间" in text:
            headers = {"x-floodgate-short-circuit": "faq/opening-hours",
                       "x-floodgate-cost-usd": "0"}
        else:
            model = "gpt-4.1" if "区别" in text else "deepseek-v3.2"
            headers = {"x-floodgate-route": "auto", "x-floodgate-model": model,
                       "x-floodgate-cost-usd": "0.0015"}
        return web.json_response(
            {"id": "x", "object": "chat.completion", "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "好的"},
                          "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}},
            headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return await aiohttp_server(app)


async def test_split_by_route_and_model(fake_gateway: Any, prompt_file: Callable[..., str]) -> None:
    path = prompt_file({"prompt": "营业时间？", "weight": 2}, {"prompt": "这款和那款有什么区别"},
                       {"prompt": "订单到哪了"})
    url = str(fake_gateway.make_url("/v1"))
    s = summarize(await run_loadtest(options("--url", url, "--concurrency", "4",
                                             "--requests", "40", "--prompts", path)))
    routes, models = s["by_route"], s["by_model"]
    assert set(routes) == {"faq/opening-hours", "auto"}
    assert set(models) == {"(none)", "gpt-4.1", "deepseek-v3.2"}
    assert models["(none)"]["requests"] == routes["faq/opening-hours"]["requests"]
    assert routes["auto"]["requests"] == models["gpt-4.1"]["requests"] + \
        models["deepseek-v3.2"]["requests"]
    assert sum(g["requests"] for g in routes.values()) == 40
    assert 12 <= routes["faq/opening-hours"]["requests"] <= 28  # weight 2 of 4
    assert s["cost_usd"]["total"] == pytest.approx(0.0015 * routes["auto"]["requests"])
    assert s["cost_usd"]["source"] == "x-floodgate-cost-usd"
    assert routes["faq/opening-hours"]["cost_usd"] == 0.0
    assert s["tokens"]["prompt"] == 400 and s["tokens"]["completion"] == 160
    report = format_report(s)
    assert "by route" in report and "faq/opening-hours" in report
    assert "by model" in report and "gpt-4.1" in report and "cost" in report


async def test_cost_from_catalogue_prices(mock: MockUpstream, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"""
upstreams:
  main: {{base_url: "{mock.url}"}}
models:
  gpt-4.1: {{upstream: main, price: {{input: 2.0, output: 8.0, cached_input: 0.5}}}}
aliases:
  smart: gpt-4.1
""")
    opts = options("--url", mock.url, "--key", KEY, "--model", "smart", "--concurrency", "1",
                   "--requests", "3", "--config", str(config))
    mock.set_behaviour("smart", cached_tokens=5)
    s = summarize(await run_loadtest(opts))
    t = s["tokens"]
    assert s["ok"] == 3 and t["completion"] == 3 * 16
    expected = ((t["prompt"] - 15) * 2.0 + 15 * 0.5 + t["completion"] * 8.0) / 1e6  # Price.cost
    assert s["cost_usd"]["total"] == pytest.approx(expected)
    assert s["cost_usd"]["source"] == f"catalogue prices ({config})"
    # Without prices or headers there is no cost at all (omitted, not zero).
    s = summarize(await run_loadtest(options("--url", mock.url, "--key", KEY, "--model", "smart",
                                             "--concurrency", "1", "--requests", "1")))
    assert s["cost_usd"] is None and "\ncost\n" not in format_report(s)
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: {}\n")
    with pytest.raises(UsageError, match="upstreams"):
        options("--rate", "1", "--config", str(bad))


# --------------------------------------------------------------------------- run(): report + JSON

@pytest.mark.e2e  # a load run against the mock: timing-heavy
async def test_run_report_and_json(mock: MockUpstream, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    args = parser().parse_args(["--url", mock.url, "--key", KEY, "--rate", "20", "--duration",
                                "0.5", "--stream", "--json", str(out)])
    code = await asyncio.to_thread(loadtest.run, args)  # run() owns its event loop
    assert code == 0
    report = capsys.readouterr().out
    for section in ("floodgate loadtest → ", "open loop, 20 req/s", "\nstatus\n", "  200  ",
                    "latency (ms, successful requests, from the scheduled send)", "ttft",
                    "last token", "\ntokens\n", "latency histogram (ms, log scale", "│", "█"):
        assert section in report, section
    assert KEY not in report
    data = json.loads(out.read_text())
    assert KEY not in out.read_text()
    assert data["sent"] == 10 and data["status_counts"] == {"200": 10}
    assert data["mode"] == "open" and data["rate"] == 20 and data["stream"] is True
    assert data["percentile_method"].startswith("linear interpolation")
    for key in ("latency_ms", "ttft_ms", "ttlt_ms", "service_time_ms", "schedule_lag_ms"):
        assert set(data[key]) == {"count", "min", "avg", "p50", "p90", "p99", "max"}
    assert sum(b["count"] for b in data["histogram_ms"]) == 10
    assert data["tokens"]["completion"] == 160 and data["cost_usd"] is None
    # Nothing succeeded: exit status 1.
    mock.set_behaviour("auto", error_rate=1.0)
    args = parser().parse_args(["--url", mock.url, "--key", KEY, "--concurrency", "1",
                                "--requests", "2"])
    assert await asyncio.to_thread(loadtest.run, args) == 1
    assert "500" in capsys.readouterr().out
