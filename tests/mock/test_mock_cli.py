"""Tests of ``floodgate mock-upstream`` (proxy/mock/cli.py): the options and the server it runs."""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import pytest

from proxy.mock import ModelBehaviour, add_arguments, parse_fault, serve_forever, settings_from_args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="floodgate mock-upstream")
    add_arguments(parser)
    return parser


def test_fault_cli_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_fault("deepseek-v3.2:error_rate=0.3,error_status=503") == (
        "deepseek-v3.2", {"error_rate": 0.3, "error_status": 503})
    assert parse_fault("llama3:8b:hang=true,retry_after=none") == (
        "llama3:8b", {"hang": True, "retry_after": None})
    args = _parser().parse_args([
        "--port", "0", "--models", "a,b", "--latency-ms", "5", "--tps", "50",
        "--fault", "a:fail_first=2,break_stream_after=1", "--fault", "c:malformed=yes"])
    s = settings_from_args(args)
    assert s.models == ["a", "b", "c"] and s.tokens_per_second == 50
    assert s.behaviours["a"] == ModelBehaviour(latency_ms=5, fail_first=2, break_stream_after=1)
    assert s.behaviours["b"].latency_ms == 5 and s.behaviours["c"].malformed is True
    for bad, message in [("gpt-4.1:colour=red", "unknown fault key 'colour'"),
                         ("gpt-4.1:error_rate=lots", "error_rate expects a float"),
                         ("gpt-4.1:error_rate=1.5", "within 0..1"),
                         ("gpt-4.1", "expected MODEL:key=value")]:
        with pytest.raises(SystemExit):
            _parser().parse_args(["--fault", bad])
        err = capsys.readouterr().err
        assert "argument --fault" in err and message in err, err
    assert "--fault" in _parser().format_help()


async def test_serve_forever_prints_url(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["--port", "0", "--completion-tokens", "2"])
    task = asyncio.create_task(serve_forever(args))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if "listening on" in (out := capsys.readouterr().out):
            break
    url = out.split("listening on ")[1].split()[0]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    async with aiohttp.ClientSession() as s, s.post(
            url + "/completions", json={"model": "gpt-4.1", "prompt": "x"}) as r:
        assert (await r.json())["usage"]["completion_tokens"] == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
