"""``GET /-/status`` and ``floodgate status``: the live state per route and per deployment, merged from
every plugin's part; the terminal view (one frame, JSON, a refresh loop that Ctrl-C ends cleanly)."""

from __future__ import annotations

import argparse
import asyncio
import io
from typing import Any

import pytest

import proxy.top.cli as top
from proxy.loader import BUILTIN_PLUGINS
from proxy.testing import mock_config
from proxy.top import render

ADMIN = "fg-admin-key-0001"
MODEL = "deepseek-v3.2"


def festival_config(url: str) -> dict[str, Any]:
    config = mock_config(url, models={
        MODEL: {"deployments": [{"upstream": "main", "name": "key-a", "limits": {"requests_per_minute": 600}},
                                {"upstream": "main", "name": "key-b", "limits": {"max_concurrent": 8},
                                 "adaptive": True}],
                "price": {"input": 0.28, "output": 0.42}, "fallbacks": ["gemini-2.5-flash"]},
        "gemini-2.5-flash": {"price": {"input": 0.3, "output": 2.5}}}, plugin_settings={
        "auth": {"admin_key": ADMIN, "keys": [{"name": "shop", "key": "fg-shop-key-001"}]},
        "ratelimit": {"deployments": {"strategy": "least_outstanding"}},
        "cost": {"ledger": {"enabled": False}},
        "degrade": {"routes": {MODEL: {"steps": [{"route": "gemini-2.5-flash"}]}}}})
    return config


async def started(floodgate: Any, mock_upstream: Any) -> Any:
    mock_upstream.set_quota("*", requests_per_minute=120)  # the provider's real quota: less than configured
    gw = await floodgate(festival_config(mock_upstream.url), builtins=BUILTIN_PLUGINS)
    client = gw.openai(api_key="fg-shop-key-001")
    for _ in range(3):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    return gw


async def status(gw: Any, key: str = ADMIN) -> tuple[int, Any]:
    response = await gw.client.get("/-/status", headers={"Authorization": f"Bearer {key}"})
    return response.status, await response.json()


async def test_the_status_has_a_row_per_route_and_per_deployment(floodgate, mock_upstream) -> None:
    gw = await started(floodgate, mock_upstream)
    code, doc = await status(gw)
    assert code == 200
    route = doc["routes"][MODEL]
    assert route["requests_per_s"] >= 0 and route["in_flight"] == 0 and route["cost_per_min_usd"] > 0
    assert route["degraded"] is None and route["steps_in_force"] == [] and route["ladder"] == ["route"]
    a, b = doc["deployments"][f"{MODEL}@key-a"], doc["deployments"][f"{MODEL}@key-b"]
    assert a["breaker"] == "closed" and a["in_flight"] == 0 and a["upstream"] == "main"
    # key-a's provider says 120/min: the limit in force follows it, below the catalogue's 600.
    assert a["limits"]["requests_per_minute"] == 120 and a["configured"]["requests_per_minute"] == 600
    assert b["adaptive"] is True and b["limits"]["concurrency"] >= 1 and b["configured"] == {"max_concurrent": 8}
    assert doc["gateway"]["ready"] is True and doc["gateway"]["cost_per_min_usd"] > 0
    assert (await status(gw, "fg-shop-key-001"))[0] == 403
    text = await gw.metrics()
    assert f'floodgate_ratelimit_deployment_limit{{deployment="{MODEL}@key-a",kind="requests_per_minute"}} 120.0' \
        in text


async def test_floodgate_status_prints_one_frame_or_the_json(floodgate, mock_upstream) -> None:
    gw = await started(floodgate, mock_upstream)
    base = str(gw.client.make_url("")).rstrip("/")

    async def run(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser()
        top.StatusCommands().proxy_add_commands(parser.add_subparsers())
        args = parser.parse_args(["status", "--url", base, *argv])
        out = io.StringIO()
        code = await asyncio.to_thread(top.run, args, out)
        return code, out.getvalue()

    code, frame = await run("--key", ADMIN, "--once")
    assert code == 0 and "\x1b" not in frame  # not a terminal: no colours
    assert MODEL in frame and f"{MODEL}@key-a" in frame and "closed" in frame and "120/600" in frame
    code, text = await run("--key", ADMIN, "--json")
    assert code == 0 and '"deployments"' in text
    code, frame = await run("--key", "fg-shop-key-001", "--once")
    assert code == 1 and "HTTP 403" in frame and "fg-shop-key-001" not in frame


def test_the_refresh_loop_ends_cleanly_on_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = iter([{"routes": {}}, {"routes": {}}])
    monkeypatch.setattr(top, "fetch", lambda url, key, timeout=5.0: next(frames))
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(top.time, "sleep", sleep)
    out = io.StringIO()
    args = argparse.Namespace(url="http://127.0.0.1:9", config=None, key="k", interval=0.5, once=False, json=False)
    assert top.run(args, out) == 0
    text = out.getvalue()
    assert text.startswith("\x1b[?1049h") and text.endswith("\x1b[?25h\x1b[?1049l")  # screen and cursor restored
    assert text.count("floodgate status —") == 2 and sleeps == [0.5, 0.5]


def test_a_frame_reads_like_top() -> None:
    doc = {"gateway": {"requests_per_s": 12.5, "in_flight": 3, "cost_per_min_usd": 0.0123, "ready": True},
           "routes": {"complex": {"requests_per_s": 4.0, "in_flight": 2, "queue": 7, "predicted_wait_ms": 420.0,
                                  "degraded": "cheaper", "steps_in_force": ["faq", "cheaper"],
                                  "cost_per_min_usd": 0.01}},
           "deployments": {"gpt-4.1@key-a": {"requests_per_s": 4.0, "in_flight": 2, "breaker": "open",
                                             "limits": {"requests_per_minute": 60.0, "concurrency": 7},
                                             "configured": {"requests_per_minute": 600, "max_concurrent": 16},
                                             "adaptive": True, "remaining": {"requests": 3.0}, "ttft_ms": 812.0,
                                             "throttled": 2}}}
    frame = render(doc, source="http://gw:8080", colour=False, now=0)
    assert "12.5 req/s · 3 in flight · $0.0123/min · ready" in frame
    assert "cheaper (faq, cheaper)" in frame and "420" in frame
    line = next(row for row in frame.splitlines() if row.startswith("gpt-4.1@key-a"))
    assert "open" in line and "60/600" in line and "7/16*" in line and "812" in line
    coloured = render(doc, source="x", colour=True, width=40)
    assert "\x1b[31m" in coloured  # the open breaker in red
    assert all(len(_visible(line)) <= 40 for line in coloured.splitlines())
    assert "cannot read the status: refused" in render(None, source="x", error="refused", colour=False)


def _visible(line: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line)
