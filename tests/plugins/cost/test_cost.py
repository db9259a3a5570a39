"""Tests of the cost plugin (plugins/cost/) over real sockets: prices, ledger rows, budgets, metrics."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import openai
import pytest
from aiohttp import web
from costkit import (
    DEEPSEEK,
    GPT41,
    MSGS,
    FaqReply,
    Finished,
    KeyAuth,
    TryInOrder,
    by_hand,
    ledger_rows,
    metric,
    read_rows,
    start,
    until,
)
from pydantic import ValidationError

import proxy
from plugins.cost import CostPlugin
from proxy.config import config_from_dict
from proxy.testing import MOCK_MODELS, mock_config

__version__ = "test"  # the loader reads it for /-/plugins (instead of scanning installed packages)

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

def most(body: dict, prices: dict = GPT41) -> float:
    """The maximum cost the plugin reserves for ``body`` (its max_tokens set)."""
    return (proxy.estimate_prompt_tokens(body) * prices["input"] + proxy.output_limit(body) * prices["output"]) / 1e6


async def test_budget_runs_out_and_the_sdk_does_not_retry(floodgate, mock_upstream, tmp_path):
    auth = KeyAuth()
    gw, plugin, finished, db = await start(floodgate, tmp_path, plugins=(auth,))
    client = gw.openai(api_key="sk-shop", max_retries=2)
    r = await client.chat.completions.create(model="gpt-4.1", messages=MSGS, max_tokens=16)
    one = by_hand(GPT41, r.usage.prompt_tokens, r.usage.completion_tokens)
    top = most({"messages": MSGS, "max_tokens": 16})
    assert 2 * one > top >= one * 0.5  # the estimate is close to the real count
    await finished.wait(1)
    auth.budgets["shop"] = {"daily_usd": one + 2 * top}  # room for two more reservations, then not a third
    for n in (2, 3):
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS, max_tokens=16)
        await finished.wait(n)
    assert mock_upstream.stats.total == 3
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS, max_tokens=16)
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
    assert metric(text, "floodgate_cost_budget_remaining_usd", key="shop", period="day") == pytest.approx(
        2 * top - 2 * one)
    assert metric(text, "floodgate_cost_budget_reserved_usd", key="shop") == 0.0
    assert metric(text, "floodgate_cost_budget_rejections_total", key="shop", period="day") == 1.0
    rows = await ledger_rows(plugin, db)
    assert [r["status"] for r in rows] == [200, 200, 200, 429, 200]
    assert sum(r["cost_usd"] for r in rows if r["key"] == "shop") == pytest.approx(3 * one)


@pytest.mark.e2e
async def test_100_concurrent_requests_spend_at_most_the_budget_plus_one_request(floodgate, mock_upstream, tmp_path):
    mock_upstream.set_behaviour("gpt-4.1", latency_ms=150)  # all 100 are in flight together
    body = {"messages": MSGS, "max_tokens": 16}
    top = most(body)
    budget = 12 * top
    gw, plugin, finished, db = await start(floodgate, tmp_path, plugins=(KeyAuth({"shop": {"daily_usd": budget}}),))
    client = gw.openai(api_key="sk-shop")

    async def one() -> int:
        try:
            await client.chat.completions.create(model="gpt-4.1", **body)
            return 200
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            return 429

    statuses = await asyncio.gather(*(one() for _ in range(100)))
    await finished.wait(100)
    spent = sum(r["cost_usd"] for r in await ledger_rows(plugin, db))
    overshoot = spent - budget
    print(f"\n100 concurrent requests, budget ${budget:.6f} (12 x ${top:.6f}): {statuses.count(200)} answered, "
          f"spent ${spent:.6f}, overshoot ${overshoot:.6f} ({100 * overshoot / budget:+.1f} %)")
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 12  # twelve reservations fit at once; more once requests settle below them
    assert mock_upstream.stats.total == statuses.count(200)
    assert spent <= budget + top


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
        r = await client.chat.completions.create(model="gpt-4.1", messages=MSGS, max_tokens=16)
    one = by_hand(GPT41, r.usage.prompt_tokens, r.usage.completion_tokens)
    await finished.wait(2)
    await gw.client.close()  # graceful shutdown: the ledger is flushed
    assert len(read_rows(db)) == 2

    for budget, refused in (({"daily_usd": 1.5 * one}, True), ({"monthly_usd": 1.5 * one}, True),
                            ({"daily_usd": 10 * one, "monthly_usd": 10 * one}, False)):
        auth = KeyAuth({"shop": budget})
        gw, plugin, finished, _ = await start(floodgate, tmp_path, plugins=(auth,))
        before = mock_upstream.stats.total
        create = gw.openai(api_key="sk-shop").chat.completions.create
        if refused:
            with pytest.raises(openai.RateLimitError):
                await create(model="gpt-4.1", messages=MSGS, max_tokens=16)
            assert mock_upstream.stats.total == before
        else:
            await create(model="gpt-4.1", messages=MSGS, max_tokens=16)
            assert mock_upstream.stats.total == before + 1
        await finished.wait(1)
        await gw.client.close()


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
    warnings = [r for r in caplog.records if "rows waiting to be stored" in r.getMessage()]
    assert len(warnings) == 1  # once per backlog, not once per row
    await gw.client.close()
    assert len(read_rows(db)) == 6


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


async def files_upstream(request: web.Request) -> web.Response:
    """A provider's ``/v1/files``: answers the bytes it received."""
    body = await request.read()
    return web.json_response({"id": "file-abc", "object": "file", "bytes": len(body)})


async def test_passthrough_requests_get_a_row_marked_unpriced(floodgate, aiohttp_server, tmp_path):
    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", files_upstream)
    server = await aiohttp_server(upstream)
    plugin, finished, db = CostPlugin(), Finished(), tmp_path / "usage.db"
    config = mock_config(str(server.make_url("/v1")), plugin_settings={"cost": {"ledger": {"path": str(db)}}})
    gw = await floodgate(config, plugins=[plugin, KeyAuth(), finished])
    upload = aiohttp.FormData()
    upload.add_field("purpose", "batch")
    upload.add_field("file", b'{"custom_id": "1"}\n' * 100, filename="batch.jsonl")
    resp = await gw.client.post("/v1/files", data=upload, headers={"Authorization": "Bearer sk-shop"})
    sent = resp.status, len(await resp.read())
    resp = await gw.client.get("/v1/files/file-abc?limit=5", headers={"Authorization": "Bearer sk-shop"})
    got = resp.status, len(await resp.read())
    resp = await gw.client.get("/-/usage", headers={"Authorization": "Bearer sk-admin"})  # admin: not usage
    assert resp.status == 200
    await finished.wait(3)
    upload_row, get_row = await ledger_rows(plugin, db)
    assert (upload_row["kind"], upload_row["method"], upload_row["endpoint"], upload_row["key"]) == (
        "passthrough", "POST", "files", "shop")
    assert (upload_row["status"], upload_row["response_bytes"]) == sent
    assert upload_row["request_bytes"] > 1900  # the multipart body as streamed upstream
    assert (get_row["method"], get_row["endpoint"], get_row["request_bytes"]) == ("GET", "files/file-abc", 0)
    assert (get_row["status"], get_row["response_bytes"]) == got == (200, got[1])
    for row in (upload_row, get_row):
        assert row["unpriced"] == 1 and row["cost_usd"] == 0.0 and row["model"] is None and row["attempts"] == 1
    assert [c.cost for c in finished.contexts[:2]] == [None, None]  # unknown, not free
    text = await gw.metrics()
    assert metric(text, "floodgate_cost_unpriced_total", key="shop", kind="passthrough") == 2.0
    report = await (await gw.client.get("/-/usage", params={"by": "kind"},
                                         headers={"Authorization": "Bearer sk-admin"})).json()
    assert [(g["group"], g["requests"], g["unpriced"]) for g in report["groups"]] == [("passthrough", 2, 2)]
