"""``GET /-/usage`` and ``floodgate usage`` of the cost plugin: the summary, its query checked strictly."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from costkit import DEEPSEEK, GPT41, MSGS, KeyAuth, by_hand, cost_config, start, usage_cli

from plugins.cost.ledger import Ledger
from plugins.cost.ledger.sqlite import SQLiteBackend
from plugins.cost.rows import Row

__version__ = "test"

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


@pytest.mark.parametrize(("query", "param"), [
    ({"since": "9" * 400}, "since"), ({"since": "999999999999w"}, "since"), ({"since": "-1d"}, "since"),
    ({"since": "nan"}, "since"), ({"since": "0001-01-01"}, "since"), ({"since": "99999-01-01"}, "since"),
    ({"since": "2026-02-31"}, "since"), ({"by": "colour"}, "by"), ({"by": ""}, "by"), ({"group": "key"}, "group"),
    ({"since": ["1h", "2h"]}, "since")])
async def test_usage_endpoint_answers_400_naming_the_param_for_any_bad_query(floodgate, mock_upstream, tmp_path,
                                                                           query, param):
    gw, plugin, finished, db = await start(floodgate, tmp_path)
    resp = await gw.client.get("/-/usage", params=[(k, v) for k, vs in query.items()
                                                   for v in (vs if isinstance(vs, list) else [vs])])
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_value", "invalid_request_error")
    assert len(error["message"]) < 300


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

def write_config(tmp_path: Path, ledger_path: str, extra: str = "") -> Path:
    return cost_config(tmp_path, f"{{path: {ledger_path}}}", extra)


def row(row_id: str, epoch: float, key: str, model: str | None, cost: float, *, estimated: bool = False,
        prompt: int = 1000, completion: int = 200, kind: str = "model", endpoint: str = "chat/completions",
        sent: int = 100, received: int = 900) -> Row:
    return Row(row_id, f"req-{row_id}", epoch, key, model, model, model, 1, prompt, completion, 0, estimated, cost,
               200, 12.5, endpoint, None, kind, "POST", sent, received, kind == "passthrough")


async def fill(db: Path) -> None:
    ledger = Ledger(SQLiteBackend(str(db)), None)
    await ledger.open()
    now = time.time()
    for i, (key, model, cost) in enumerate([("shop", "gpt-4.1", 0.25), ("shop", "gpt-4.1", 0.5),
                                            ("bot", "deepseek-v3.2", 0.125)]):
        ledger.append(row(f"r{i}", now - 10 + i, key, model, cost, estimated=i == 2))
    ledger.append(row("old", now - 30 * 86400, "shop", "gpt-4.1", 8.0, prompt=1, completion=1))
    ledger.append(row("up", now - 5, "shop", None, 0.0, prompt=0, completion=0, kind="passthrough",
                      endpoint="files", sent=5000, received=200))
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
    assert header.split() == ["key", "requests", "prompt", "tokens", "completion", "tokens", "cost", "USD", "estimated",
                              "unpriced"]
    assert re.search(r"^shop\s+3\s+2,000\s+400\s+0\.750000\s+0\s+1$", out, re.M)  # one passthrough: unpriced
    assert re.search(r"^bot\s+1\s+1,000\s+200\s+0\.125000\s+1\s+0$", out, re.M)
    assert re.search(r"^total\s+4\s+3,000\s+600\s+0\.875000\s+1\s+1$", out, re.M)

    assert usage_cli("--config", str(config), "--by", "model") == 0  # all time: the old row counts
    out = capsys.readouterr().out
    assert re.search(r"^gpt-4\.1\s+3\s+2,001\s+401\s+8\.750000\s+0\s+0$", out, re.M)
    assert re.search(r"^-\s+1\s+0\s+0\s+0\.000000\s+0\s+1$", out, re.M)

    assert usage_cli("--config", str(config), "--by", "kind", "--json") == 0
    kinds = {g["group"]: g for g in orjson.loads(capsys.readouterr().out)["groups"]}
    assert kinds["passthrough"]["unpriced"] == 1 and kinds["passthrough"]["request_bytes"] == 5000
    assert kinds["model"]["requests"] == 4 and kinds["model"]["unpriced"] == 0

    assert usage_cli("--config", str(config), "--by", "day", "--json") == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["by"] == "day" and len(report["groups"]) == 2
    assert report["total"] == {"requests": 5, "prompt_tokens": 3001, "completion_tokens": 601, "cached_tokens": 0,
                               "cost_usd": 8.875, "estimated": 1, "unpriced": 1, "request_bytes": 5400,
                               "response_bytes": 3800}


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
    assert "is not a date" in capsys.readouterr().err

