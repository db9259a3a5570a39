"""Tests of the cost plugin (plugins/cost/) over real sockets."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from pydantic import ValidationError

import proxy
from plugins.cost import CostPlugin
from plugins.cost import plugin as cost_plugin_module
from plugins.cost.ledger import Ledger, Row
from plugins.cost.report import periods
from proxy.config import config_from_dict
from proxy.testing import MOCK_MODELS, mock_config

__version__ = "test"  # the loader reads it for /-/plugins (instead of scanning installed packages)

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my parcel?"}]
# Catalogue prices (USD per million tokens) of proxy.testing.MOCK_MODELS, written out by hand.
GPT41 = {"input": 2.00, "output": 8.00, "cached_input": 0.50}
DEEPSEEK = {"input": 0.28, "output": 0.42, "cached_input": 0.028}


@pytest.fixture(autouse=True)
def _cached_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loader calls importlib.metadata.packages_distributions() (a scan of every installed
    # package, ~0.2-1 s) for each core plugin of every app built; cache it so this module stays fast.
    monkeypatch.setattr(importlib.metadata, "packages_distributions", _packages_distributions)


_packages_distributions = functools.cache(importlib.metadata.packages_distributions)


def by_hand(prices: Mapping[str, float], prompt: int, completion: int, cached: int = 0) -> float:
    return ((prompt - cached) * prices["input"] + cached * prices["cached_input"]
            + completion * prices["output"]) / 1_000_000


class Finished:
    """Counts finished requests (runs after the cost plugin), so tests can wait for the observers."""

    name = "test-finished"

    def __init__(self) -> None:
        self.contexts: list[proxy.RequestContext] = []

    @proxy.hookimpl(trylast=True)
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        self.contexts.append(ctx)

    async def wait(self, n: int, timeout: float = 5.0) -> None:
        await until(lambda: len(self.contexts) >= n, timeout)


class KeyAuth:
    """Test auth: ``sk-admin`` is an admin, ``sk-<name>`` is key <name> with ``budgets[name]``."""

    name = "test-auth"

    def __init__(self, budgets: dict[str, Any] | None = None) -> None:
        self.budgets = budgets if budgets is not None else {}

    @proxy.hookimpl
    def proxy_authenticate(self, ctx: proxy.RequestContext) -> proxy.Principal:
        token = ctx.headers.get("Authorization", "").removeprefix("Bearer ")
        if token == "sk-admin":
            return proxy.Principal("admin", admin=True)
        if not token.startswith("sk-"):
            raise proxy.Rejection(401, "bad key", code="invalid_api_key", should_retry=False)
        name = token[3:]
        budget = self.budgets.get(name)
        return proxy.Principal(name, policy=proxy.KeyPolicy(budget=budget))


class FaqReply:
    name = "test-faq"

    @proxy.hookimpl
    def proxy_short_circuit(self, ctx: proxy.RequestContext) -> proxy.Reply | None:
        if "opening hours" in ctx.last_user_text():
            return proxy.Reply("9 to 5.", source="faq/hours")
        return None


class TryInOrder:
    """next_attempt: the route's targets in order until one succeeds."""

    name = "test-retry"

    @proxy.hookimpl
    def proxy_next_attempt(self, ctx: proxy.RequestContext) -> proxy.Attempt | proxy.Stop:
        if ctx.route is None or (ctx.attempts and ctx.attempts[-1].ok) or len(ctx.attempts) >= len(ctx.route.targets):
            return proxy.STOP
        return proxy.Attempt(ctx.route.targets[len(ctx.attempts)])


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        with contextlib.suppress(sqlite3.OperationalError):  # table not created yet
            return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY epoch")]
    return []


async def start(floodgate: Any, tmp_path: Path, *, plugins: tuple[Any, ...] = (),
                ledger: Mapping[str, Any] | None = None,
                **settings: Any) -> tuple[Any, CostPlugin, Finished, Path]:
    db = tmp_path / "usage.db"
    plugin, finished = CostPlugin(), Finished()
    block = {"ledger": {"path": str(db), **(ledger or {})}, **settings}
    gw = await floodgate(plugins=[plugin, *plugins, finished], plugin_settings={"cost": block},
                         aliases={"cheap": "deepseek-v3.2"})
    return gw, plugin, finished, db


async def ledger_rows(plugin: CostPlugin, db: Path) -> list[dict[str, Any]]:
    assert plugin.ledger is not None
    await plugin.ledger.flush()
    return read_rows(db)


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return None


# -- cost = the mock's usage priced by hand ---------------------------------------------

async def test_non_stream_cost_header_and_ledger_match_usage(floodgate, mock_upstream, tmp_path):
    mock_upstream.set_behaviour("gpt-4.1", cached_tokens=5)
    gw, plugin, finished, db = await start(floodgate, tmp_path)
    client = gw.openai()
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS)
    r = raw.parse()
    usage = r.usage
    assert usage.prompt_tokens_details.cached_tokens == 5
    expected = by_hand(GPT41, usage.prompt_tokens, usage.completion_tokens, cached=5)
    assert expected > 0
    assert float(raw.headers["x-floodgate-cost-usd"]) == pytest.approx(expected, abs=5e-9)
    assert raw.headers["x-floodgate-cost-usd"] == f"{expected:.8f}"

    await finished.wait(1)
    assert finished.contexts[0].cost == pytest.approx(expected, rel=1e-12)
    [row] = await ledger_rows(plugin, db)
    assert row["prompt_tokens"] == usage.prompt_tokens
    assert row["completion_tokens"] == usage.completion_tokens
    assert row["cached_tokens"] == 5
    assert row["estimated"] == 0
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-12)
    assert row["request_id"] == raw.headers["x-request-id"]
    assert (row["key"], row["requested_model"], row["model"], row["route"]) == (
        "anonymous", "gpt-4.1", "gpt-4.1", "gpt-4.1")
    assert (row["attempts"], row["status"], row["endpoint"], row["short_circuit"]) == (1, 200, "chat/completions", None)
    assert row["latency_ms"] > 0
    assert abs(row["epoch"] - time.time()) < 60
    assert row["ts"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(row["epoch"]))) and row["ts"].endswith("Z")


async def test_core_observers_see_the_cost(floodgate, mock_upstream, tmp_path, caplog):
    plugin = CostPlugin()
    gw = await floodgate(plugins=[plugin], server={"access_log": True},
                         plugin_settings={"cost": {"ledger": {"enabled": False}}})
    with caplog.at_level(logging.INFO, logger="floodgate.access"):
        raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS)
        await until(lambda: any("cost_usd=" in r.getMessage() for r in caplog.records))
    [line] = [r.getMessage() for r in caplog.records if r.name == "floodgate.access"]
    assert f"cost_usd={raw.headers['x-floodgate-cost-usd']}" in line  # set before the trylast access log ran


async def test_alias_and_embeddings_are_priced_by_the_catalogue_model(floodgate, mock_upstream, tmp_path):
    gw, plugin, finished, db = await start(floodgate, tmp_path)
    client = gw.openai()
    raw = await client.chat.completions.with_raw_response.create(model="cheap", messages=MSGS)
    r = raw.parse()
    chat_cost = by_hand(DEEPSEEK, r.usage.prompt_tokens, r.usage.completion_tokens)
    assert raw.headers["x-floodgate-cost-usd"] == f"{chat_cost:.8f}"
    raw = await client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a b c", "d e"])
    e = raw.parse()
    emb_cost = e.usage.prompt_tokens * 0.02 / 1_000_000
    assert raw.headers["x-floodgate-cost-usd"] == f"{emb_cost:.8f}"
    await finished.wait(2)
    chat, emb = await ledger_rows(plugin, db)
    assert (chat["requested_model"], chat["model"]) == ("cheap", "deepseek-v3.2")
    assert chat["cost_usd"] == pytest.approx(chat_cost, rel=1e-12)
    assert (emb["endpoint"], emb["prompt_tokens"], emb["completion_tokens"]) == ("embeddings", e.usage.prompt_tokens, 0)
    assert emb["cost_usd"] == pytest.approx(emb_cost, rel=1e-12)


async def test_streams_are_accounted_exactly_with_and_without_include_usage(floodgate, mock_upstream, tmp_path):
    mock_upstream.set_behaviour("gpt-4.1", cached_tokens=5)
    gw, plugin, finished, db = await start(floodgate, tmp_path)
    client = gw.openai()

    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=MSGS, stream=True, stream_options={"include_usage": True})
    assert "x-floodgate-cost-usd" not in raw.headers
    chunks = [c async for c in raw.parse()]
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details.cached_tokens == 5

    raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS, stream=True)
    assert "x-floodgate-cost-usd" not in raw.headers
    hidden = [c async for c in raw.parse()]
    assert hidden and all(c.usage is None for c in hidden)  # the core hid the usage chunk it asked for

    await finished.wait(2)
    expected = by_hand(GPT41, usage.prompt_tokens, usage.completion_tokens, cached=5)
    rows = await ledger_rows(plugin, db)
    assert len(rows) == 2
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
            usage.prompt_tokens, usage.completion_tokens, 5)
        assert row["estimated"] == 0 and row["status"] == 200
        assert row["cost_usd"] == pytest.approx(expected, rel=1e-12)


async def test_client_disconnect_mid_stream_is_estimated_and_charged(floodgate, mock_upstream, tmp_path):
    mock_upstream.set_behaviour("gpt-4.1", tokens_per_second=50, completion_tokens=200)  # a 4 s stream
    gw, plugin, finished, db = await start(floodgate, tmp_path)
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MSGS, "stream": True})
    assert resp.status == 200
    received = b""
    while received.count(b"data: ") < 3:
        received += await resp.content.readany()
    resp.close()
    await finished.wait(1)
    ctx = finished.contexts[0]
    assert ctx.client_disconnected
    [row] = await ledger_rows(plugin, db)
    assert row["estimated"] == 1 and row["status"] == 499
    assert row["prompt_tokens"] > 0 and row["cost_usd"] > 0
    assert row["cost_usd"] == pytest.approx(by_hand(GPT41, row["prompt_tokens"], row["completion_tokens"]), rel=1e-12)
    text = await gw.metrics()
    assert metric(text, "floodgate_cost_estimated_total", model="gpt-4.1") == 1.0


async def test_the_model_actually_used_is_priced_after_a_fallback(floodgate, mock_upstream, tmp_path):
    mock_upstream.set_behaviour("gpt-4.1", fail_first=1, error_status=503)
    models = {name: dict(entry) for name, entry in MOCK_MODELS.items()}
    models["gpt-4.1"] = {**models["gpt-4.1"], "fallbacks": ["deepseek-v3.2"]}
    plugin, finished = CostPlugin(), Finished()
    db = tmp_path / "usage.db"
    gw = await floodgate(plugins=[plugin, TryInOrder(), finished], models=models,
                         plugin_settings={"cost": {"ledger": {"path": str(db)}}})
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS)
    r = raw.parse()
    expected = by_hand(DEEPSEEK, r.usage.prompt_tokens, r.usage.completion_tokens)
    assert raw.headers["x-floodgate-cost-usd"] == f"{expected:.8f}"
    await finished.wait(1)
    [row] = await ledger_rows(plugin, db)
    assert (row["requested_model"], row["model"], row["route"], row["attempts"]) == (
        "gpt-4.1", "deepseek-v3.2", "gpt-4.1", 2)
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-12)


async def test_short_circuits_and_failures_cost_nothing(floodgate, mock_upstream, tmp_path):
    mock_upstream.set_behaviour("gpt-4.1", fail_first=1, error_status=503)
    gw, plugin, finished, db = await start(floodgate, tmp_path, plugins=(FaqReply(),))
    client = gw.openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "What are your opening hours?"}])
    assert "x-floodgate-cost-usd" not in raw.headers
    with pytest.raises(openai.APIStatusError):
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=MSGS)
    await finished.wait(3)
    assert [c.cost for c in finished.contexts] == [0.0, 0.0, 0.0]
    faq, failed, unknown = await ledger_rows(plugin, db)
    assert (faq["short_circuit"], faq["model"], faq["cost_usd"], faq["status"]) == ("faq/hours", None, 0.0, 200)
    assert faq["completion_tokens"] > 0 and faq["estimated"] == 1  # what the client was told, free
    assert (failed["model"], failed["attempts"], failed["cost_usd"], failed["status"]) == ("gpt-4.1", 1, 0.0, 502)
    assert (unknown["model"], unknown["route"], unknown["cost_usd"], unknown["status"]) == (None, None, 0.0, 404)
    text = await gw.metrics()
    assert "floodgate_cost_tokens_total{" not in text  # nothing was billed by an upstream


# -- budgets -----------------------------------------------------------------------------

async def test_budget_runs_out_and_the_sdk_does_not_retry(floodgate, mock_upstream, tmp_path):
    auth = KeyAuth()
    gw, plugin, finished, db = await start(floodgate, tmp_path, plugins=(auth,))
    client = gw.openai(api_key="sk-shop", max_retries=2)
    r = await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    one = by_hand(GPT41, r.usage.prompt_tokens, r.usage.completion_tokens)
    await finished.wait(1)
    auth.budgets["shop"] = {"daily_usd": 2.5 * one}  # room for two more requests (the 3rd overshoots)
    for n in (2, 3):
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
        await finished.wait(n)
    assert mock_upstream.stats.total == 3
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    err = info.value
    assert err.code == "insufficient_quota" and err.type == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    assert "daily budget" in err.message and "sk-" not in err.message
    await finished.wait(4)
    await asyncio.sleep(0.05)
    assert len(finished.contexts) == 4  # one refused request: the SDK did not retry it
    assert mock_upstream.stats.total == 3
    # other keys are not affected
    await gw.openai(api_key="sk-other").chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert mock_upstream.stats.total == 4
    await finished.wait(5)
    text = await gw.metrics()
    assert metric(text, "floodgate_cost_budget_remaining_usd", key="shop", period="day") == 0.0
    assert metric(text, "floodgate_cost_budget_rejections_total", key="shop", period="day") == 1.0
    rows = await ledger_rows(plugin, db)
    assert [r["status"] for r in rows] == [200, 200, 200, 429, 200]
    assert sum(r["cost_usd"] for r in rows if r["key"] == "shop") == pytest.approx(3 * one)


async def test_default_budget_and_per_key_override(floodgate, mock_upstream, tmp_path):
    auth = KeyAuth({"vip": {"daily_usd": None}, "capped": {"monthly_usd": 0}})
    gw, plugin, finished, db = await start(floodgate, tmp_path, plugins=(auth,),
                                           default_budget={"daily_usd": 0, "monthly_usd": 1000})
    with pytest.raises(openai.RateLimitError) as info:
        await gw.openai(api_key="sk-plain").chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert info.value.code == "insufficient_quota"
    await gw.openai(api_key="sk-vip").chat.completions.create(model="gpt-4.1", messages=MSGS)  # null: unlimited
    with pytest.raises(openai.RateLimitError) as info:  # daily from the default (0), monthly its own
        await gw.openai(api_key="sk-capped").chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert "daily budget" in info.value.message
    assert mock_upstream.stats.total == 1


def test_a_wrong_budget_shape_fails_where_the_policy_is_built():
    # Typed: a budget that is not a number cannot reach a request (no 500 at request time).
    with pytest.raises(ValidationError):
        proxy.KeyPolicy(budget={"daily_usd": "lots"})
    config = config_from_dict(mock_config("http://127.0.0.1:9", plugin_settings={
        "auth": {"keys": [{"name": "odd", "key": "sk-odd-key-1", "budget": {"daily_usd": "lots"}}]}}))
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.create_app(config, entry_points=False)
    assert [e.path for e in info.value.errors] == ["plugins.auth.keys.0.budget.daily_usd"]


async def test_spending_survives_a_restart(floodgate, mock_upstream, tmp_path):
    gw, plugin, finished, db = await start(floodgate, tmp_path, plugins=(KeyAuth(),))
    client = gw.openai(api_key="sk-shop")
    for _ in range(2):
        r = await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    one = by_hand(GPT41, r.usage.prompt_tokens, r.usage.completion_tokens)
    await finished.wait(2)
    await gw.client.close()  # graceful shutdown: the ledger is flushed
    assert len(read_rows(db)) == 2

    for budget, refused in (({"daily_usd": 1.5 * one}, True), ({"monthly_usd": 1.5 * one}, True),
                            ({"daily_usd": 10 * one, "monthly_usd": 10 * one}, False)):
        auth = KeyAuth({"shop": budget})
        gw, plugin, finished, _ = await start(floodgate, tmp_path, plugins=(auth,))
        before = mock_upstream.stats.total
        if refused:
            with pytest.raises(openai.RateLimitError):
                await gw.openai(api_key="sk-shop").chat.completions.create(model="gpt-4.1", messages=MSGS)
            assert mock_upstream.stats.total == before
        else:
            await gw.openai(api_key="sk-shop").chat.completions.create(model="gpt-4.1", messages=MSGS)
            assert mock_upstream.stats.total == before + 1
        await finished.wait(1)
        await gw.client.close()


class ShiftedTime:
    """The ``time`` module seen by the plugin, ``offset`` seconds in the future."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def test_daily_budget_resets_at_utc_midnight_monthly_does_not(floodgate, mock_upstream, tmp_path, monkeypatch):
    auth = KeyAuth()
    gw, plugin, finished, db = await start(floodgate, tmp_path, plugins=(auth,), ledger={"enabled": False})
    client = gw.openai(api_key="sk-shop")
    r = await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    one = by_hand(GPT41, r.usage.prompt_tokens, r.usage.completion_tokens)
    await finished.wait(1)
    auth.budgets["shop"] = {"daily_usd": 0.5 * one}
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    now = time.time()
    day_start, day_end, month_start, month_end = periods(now)
    if month_end - day_end >= 86400:  # tomorrow is in the same month
        monkeypatch.setattr(cost_plugin_module, "time", ShiftedTime(day_end + 1 - now))
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)  # a new day
        auth.budgets["shop"] = {"monthly_usd": 1.5 * one}  # 2 requests this month
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
        assert "monthly budget" in info.value.message
    monkeypatch.setattr(cost_plugin_module, "time", ShiftedTime(month_end + 1 - now))
    await client.chat.completions.create(model="gpt-4.1", messages=MSGS)  # a new month
    assert not db.exists()  # ledger disabled: budgets are kept in memory only


# -- the ledger ----------------------------------------------------------------------------

async def test_no_row_is_lost_on_graceful_shutdown(floodgate, mock_upstream, tmp_path):
    gw, plugin, finished, db = await start(floodgate, tmp_path, ledger={"batch_size": 1000, "flush_interval_s": 60})
    client = gw.openai()

    async def one(i: int) -> str:
        if i % 2:
            raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS, stream=True)
            [_ async for _ in raw.parse()]
        else:
            raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS)
        return raw.headers["x-request-id"]

    ids = await asyncio.gather(*(one(i) for i in range(25)))
    await finished.wait(25)
    assert read_rows(db) == []  # all pending in memory: nothing written yet
    assert metric(await gw.metrics(), "floodgate_cost_ledger_pending_rows") == 25.0
    await gw.client.close()
    rows = read_rows(db)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert all(r["cost_usd"] > 0 and r["estimated"] == 0 for r in rows)


async def test_a_full_batch_is_written_without_waiting_for_the_interval(floodgate, mock_upstream, tmp_path):
    gw, plugin, finished, db = await start(floodgate, tmp_path, ledger={"batch_size": 5, "flush_interval_s": 60})
    client = gw.openai()
    for _ in range(5):
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    await until(lambda: len(read_rows(db)) == 5)


async def test_the_interval_flushes_a_partial_batch(floodgate, mock_upstream, tmp_path):
    gw, plugin, finished, db = await start(floodgate, tmp_path, ledger={"batch_size": 100, "flush_interval_s": 0.05})
    await gw.openai().chat.completions.create(model="gpt-4.1", messages=MSGS)
    await until(lambda: len(read_rows(db)) == 1)


async def test_backlog_warning_keeps_rows(floodgate, mock_upstream, tmp_path, caplog):
    gw, plugin, finished, db = await start(
        floodgate, tmp_path, ledger={"batch_size": 1000, "flush_interval_s": 60, "warn_backlog": 3})
    client = gw.openai()
    with caplog.at_level(logging.WARNING, logger="floodgate.cost"):
        for _ in range(6):
            await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
        await finished.wait(6)
    warnings = [r for r in caplog.records if "falling behind" in r.getMessage()]
    assert len(warnings) == 1  # once per backlog, not once per row
    await gw.client.close()
    assert len(read_rows(db)) == 6


# -- GET /-/usage --------------------------------------------------------------------------

async def test_usage_endpoint_groups_and_requires_admin(floodgate, mock_upstream, tmp_path):
    gw, plugin, finished, db = await start(floodgate, tmp_path, plugins=(KeyAuth(),))
    shop, bot = gw.openai(api_key="sk-shop"), gw.openai(api_key="sk-bot")
    costs = {}
    for _ in range(2):
        r = await shop.chat.completions.create(model="gpt-4.1", messages=MSGS)
        costs["shop"] = costs.get("shop", 0) + by_hand(GPT41, r.usage.prompt_tokens, r.usage.completion_tokens)
    r = await bot.chat.completions.create(model="cheap", messages=MSGS)
    costs["bot"] = by_hand(DEEPSEEK, r.usage.prompt_tokens, r.usage.completion_tokens)
    await finished.wait(3)

    resp = await gw.client.get("/-/usage", headers={"Authorization": "Bearer sk-shop"})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "admin_required"
    resp = await gw.client.get("/-/usage")
    assert resp.status == 401

    admin = {"Authorization": "Bearer sk-admin"}

    async def usage(**query: str) -> dict[str, Any]:
        resp = await gw.client.get("/-/usage", params=query, headers=admin)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    report = await usage()  # by key by default; rows still pending are flushed first
    assert report["by"] == "key" and report["since"] is None
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == {"shop", "bot"}
    assert groups["shop"]["requests"] == 2 and groups["bot"]["requests"] == 1
    assert groups["shop"]["cost_usd"] == pytest.approx(costs["shop"])
    assert groups["bot"]["cost_usd"] == pytest.approx(costs["bot"])
    assert report["groups"][0]["group"] == "shop"  # most expensive first
    assert report["total"]["requests"] == 3
    assert report["total"]["cost_usd"] == pytest.approx(costs["shop"] + costs["bot"])
    assert report["total"]["prompt_tokens"] == sum(g["prompt_tokens"] for g in report["groups"])

    assert {g["group"] for g in (await usage(by="model"))["groups"]} == {"gpt-4.1", "deepseek-v3.2"}
    assert {g["group"] for g in (await usage(by="route"))["groups"]} == {"gpt-4.1", "deepseek-v3.2"}
    days = (await usage(by="day"))["groups"]
    assert [g["group"] for g in days] == [time.strftime("%Y-%m-%d", time.gmtime())]
    assert (await usage(since="1h"))["total"]["requests"] == 3
    future = await usage(since="2999-01-01")
    assert future["groups"] == [] and future["total"]["requests"] == 0
    assert future["since"] == "2999-01-01T00:00:00.000Z"

    for query, param in (({"by": "colour"}, "by"), ({"since": "last tuesday"}, "since")):
        resp = await gw.client.get("/-/usage", params=query, headers=admin)
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert (error["param"], error["code"], error["type"]) == (param, "invalid_value", "invalid_request_error")


async def test_usage_endpoint_without_auth_plugin_and_with_ledger_disabled(floodgate, mock_upstream, tmp_path):
    gw, plugin, finished, db = await start(floodgate, tmp_path)
    await gw.openai().chat.completions.create(model="gpt-4.1", messages=MSGS)
    await finished.wait(1)
    resp = await gw.client.get("/-/usage")  # no auth plugin: a development setup, open
    assert (await resp.json())["total"]["requests"] == 1

    gw, plugin, finished, db = await start(floodgate, tmp_path, ledger={"enabled": False})
    resp = await gw.client.get("/-/usage")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "ledger_disabled"

    gw, plugin, finished, db = await start(floodgate, tmp_path, ledger={"path": ":memory:"})
    await gw.openai().chat.completions.create(model="gpt-4.1", messages=MSGS)
    await finished.wait(1)
    resp = await gw.client.get("/-/usage", params={"by": "model"})
    assert [g["group"] for g in (await resp.json())["groups"]] == ["gpt-4.1"]


# -- floodgate usage -----------------------------------------------------------------------

def usage_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="floodgate")
    sub = parser.add_subparsers(dest="command")
    CostPlugin().proxy_add_commands(subparsers=sub)
    args = parser.parse_args(["usage", *argv])
    return args.func(args)


def write_config(tmp_path: Path, ledger_path: str, extra: str = "") -> Path:
    path = tmp_path / "floodgate.yaml"
    path.write_text(f"""
upstreams:
  main: {{base_url: "http://127.0.0.1:9"}}
plugins:
  cost:
    ledger:
      path: {ledger_path}
{extra}""")
    return path


async def fill(db: Path) -> None:
    ledger = Ledger(str(db))
    await ledger.open()
    now = time.time()
    for i, (key, model, cost) in enumerate([("shop", "gpt-4.1", 0.25), ("shop", "gpt-4.1", 0.5),
                                            ("bot", "deepseek-v3.2", 0.125)]):
        ledger.append(Row(f"r{i}", now - 10 + i, key, model, model, model, 1, 1000, 200, 0, i == 2, cost, 200,
                          12.5, "chat/completions", None))
    ledger.append(Row("old", now - 30 * 86400, "shop", "gpt-4.1", "gpt-4.1", "gpt-4.1", 1, 1, 1, 0, False, 8.0,
                      200, 1.0, "chat/completions", None))
    await ledger.close()


async def test_usage_command_table_and_json(tmp_path, capsys, monkeypatch):
    await fill(tmp_path / "usage.db")
    monkeypatch.chdir(tmp_path)  # relative ledger paths are relative to the working directory
    config = write_config(tmp_path, "usage.db")

    assert usage_cli("--config", str(config), "--since", "7d") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("usage by key since ")
    header = next(line for line in lines if line.startswith("key"))
    assert header.split() == ["key", "requests", "prompt", "tokens", "completion", "tokens", "cost", "USD", "estimated"]
    assert re.search(r"^shop\s+2\s+2,000\s+400\s+0\.750000\s+0$", out, re.M)
    assert re.search(r"^bot\s+1\s+1,000\s+200\s+0\.125000\s+1$", out, re.M)
    assert re.search(r"^total\s+3\s+3,000\s+600\s+0\.875000\s+1$", out, re.M)

    assert usage_cli("--config", str(config), "--by", "model") == 0  # all time: the old row counts
    out = capsys.readouterr().out
    assert re.search(r"^gpt-4\.1\s+3\s+2,001\s+401\s+8\.750000\s+0$", out, re.M)

    assert usage_cli("--config", str(config), "--by", "day", "--json") == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["by"] == "day" and len(report["groups"]) == 2
    assert report["total"] == {"requests": 4, "prompt_tokens": 3001, "completion_tokens": 601, "cached_tokens": 0,
                               "cost_usd": 8.875, "estimated": 1}


async def test_usage_command_reads_what_the_gateway_wrote(floodgate, mock_upstream, tmp_path, capsys):
    gw, plugin, finished, db = await start(floodgate, tmp_path)
    r = await gw.openai().chat.completions.create(model="gpt-4.1", messages=MSGS)
    await finished.wait(1)
    await gw.client.close()
    assert usage_cli("--config", str(write_config(tmp_path, str(db))), "--json") == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["groups"][0]["group"] == "anonymous"
    assert report["total"]["prompt_tokens"] == r.usage.prompt_tokens
    expected = by_hand(GPT41, r.usage.prompt_tokens, r.usage.completion_tokens)
    assert report["total"]["cost_usd"] == pytest.approx(expected)


def test_usage_command_errors(tmp_path, capsys):
    config = write_config(tmp_path, str(tmp_path / "none.db"))
    assert usage_cli("--config", str(config)) == 1
    assert "no usage ledger at" in capsys.readouterr().err
    config = write_config(tmp_path, str(tmp_path / "missing" / "u.db"))
    assert usage_cli("--config", str(config)) == 1
    assert "plugins.cost.ledger.path: directory" in capsys.readouterr().err
    config = write_config(tmp_path, "x.db", extra="    colour: red\n")
    assert usage_cli("--config", str(config)) == 1
    assert "plugins.cost.colour: unknown key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        usage_cli("--config", str(config), "--since", "whenever")
    assert "neither a date" in capsys.readouterr().err


# -- metrics and config ----------------------------------------------------------------------

async def test_metrics(floodgate, mock_upstream, tmp_path):
    mock_upstream.set_behaviour("gpt-4.1", cached_tokens=5)
    gw, plugin, finished, db = await start(floodgate, tmp_path, default_budget={"daily_usd": 1.0, "monthly_usd": 20})
    client = gw.openai()
    r1 = await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    r2 = await client.chat.completions.create(model="cheap", messages=MSGS)
    await finished.wait(2)
    c1 = by_hand(GPT41, r1.usage.prompt_tokens, r1.usage.completion_tokens, cached=5)
    c2 = by_hand(DEEPSEEK, r2.usage.prompt_tokens, r2.usage.completion_tokens)
    text = await gw.metrics()
    tokens = "floodgate_cost_tokens_total"
    assert metric(text, tokens, model="gpt-4.1", key="anonymous", type="prompt") == r1.usage.prompt_tokens
    assert metric(text, tokens, model="gpt-4.1", key="anonymous", type="completion") == r1.usage.completion_tokens
    assert metric(text, tokens, model="gpt-4.1", key="anonymous", type="cached") == 5
    assert metric(text, tokens, model="deepseek-v3.2", key="anonymous", type="prompt") == r2.usage.prompt_tokens
    assert metric(text, "floodgate_cost_usd_total", model="gpt-4.1", key="anonymous") == pytest.approx(c1)
    assert metric(text, "floodgate_cost_usd_total", model="deepseek-v3.2", key="anonymous") == pytest.approx(c2)
    remaining = "floodgate_cost_budget_remaining_usd"
    assert metric(text, remaining, key="anonymous", period="day") == pytest.approx(1.0 - c1 - c2)
    assert metric(text, remaining, key="anonymous", period="month") == pytest.approx(20 - c1 - c2)
    assert metric(text, "floodgate_cost_estimated_total", model="gpt-4.1") is None  # exact usage


def test_config_errors_name_their_paths(tmp_path):
    text = f"""\
upstreams:
  main: {{base_url: "http://127.0.0.1:9"}}
plugins:
  cost:
    default_budget:
      daily_usd: -1
      weekly_usd: 5
    ledger:
      batch_size: 0
      flush_interval_s: -2
      path: {tmp_path}/u.db
"""
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.create_app(proxy.parse_config(text, source="f.yaml"), plugins=[CostPlugin()], builtins=(),
                         entry_points=False)
    found = {e.path: e for e in info.value.errors}
    assert set(found) == {"plugins.cost.default_budget.daily_usd", "plugins.cost.default_budget.weekly_usd",
                          "plugins.cost.ledger.batch_size", "plugins.cost.ledger.flush_interval_s"}
    assert found["plugins.cost.ledger.batch_size"].line == 9
    assert "did you mean 'daily_usd'" in found["plugins.cost.default_budget.weekly_usd"].message

    config = config_from_dict({"upstreams": {"main": {"base_url": "http://127.0.0.1:9"}},
                               "plugins": {"cost": {"ledger": {"path": str(tmp_path / "no" / "such" / "u.db")}}}})
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.create_app(config, plugins=[CostPlugin()], builtins=(), entry_points=False)
    [error] = info.value.errors
    assert error.path == "plugins.cost.ledger.path" and "does not exist" in error.message

    config = config_from_dict({"upstreams": {"main": {"base_url": "http://127.0.0.1:9"}},
                               "plugins": {"cost": {"ledger": {"path": str(tmp_path)}}}})
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.create_app(config, plugins=[CostPlugin()], builtins=(), entry_points=False)
    assert "is a directory" in info.value.errors[0].message


def test_plugin_loads_by_dotted_path():
    from proxy.loader import load_object
    plugin = load_object("plugins.cost")
    assert isinstance(plugin, CostPlugin) and plugin.name == "cost"
