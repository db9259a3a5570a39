"""Tests of the complexity router (plugins/router/) over real sockets with the openai SDK."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry

import proxy
from plugins.router import Decision, RouterPlugin
from proxy.config import config_from_dict
from proxy.testing import mock_config

ROUTER: dict[str, Any] = {
    "default": "simple",
    "routes": {
        "simple": {"model": "deepseek-v3.2", "fallbacks": ["gemini-2.5-flash"],
                   "max_tokens": {"default": 256, "cap": 512}},
        "standard": {"model": "gemini-2.5-flash", "fallbacks": ["gpt-4.1"]},
        "complex": {"model": "gpt-4.1", "fallbacks": ["gemini-2.5-flash"], "params": {"temperature": 0.2}},
        "order": {"model": "deepseek-v3.2", "fallbacks": ["gemini-2.5-flash"],
                  "system_prompt": "你是订单查询助手，只回答订单相关的问题。"},
    },
    "rules": [
        {"name": "agentic", "route": "complex", "features": ["tools", "response_format"]},
        {"name": "vision", "route": "standard", "features": ["images"]},
        {"name": "compare", "route": "standard", "keywords": ["区别", "比较", "推荐", "Compare"]},
        {"name": "reasoning", "route": "complex", "keywords": ["为什么", "分析", "计算", "方案", "why"]},
        {"name": "long", "route": "complex", "min_prompt_tokens": 400},
        {"name": "chatty", "route": "standard", "min_turns": 4},
    ],
}
ALIASES = {"gpt-4o-mini": "auto", "订单查询": "order"}
TOOLS = [{"type": "function", "function": {"name": "track_parcel", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}}}}]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


class KeyAuth:
    """A stand-in for the auth plugin: every caller is key ``k`` with the given policy."""

    name = "testauth"
    __version__ = "test"  # spares the loader a slow package-metadata scan

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    @proxy.hookimpl
    def proxy_authenticate(self, ctx: proxy.RequestContext) -> proxy.Principal:
        return proxy.Principal("k", policy=proxy.KeyPolicy(**self.settings))


class WalkTargets:
    """A stand-in for the retry plugin: tries the route's targets in order, once each."""

    name = "walk"
    __version__ = "test"

    @proxy.hookimpl
    def proxy_next_attempt(self, ctx: proxy.RequestContext) -> proxy.Attempt | proxy.Stop:
        done = bool(ctx.attempts) and ctx.attempts[-1].ok
        if done or ctx.route is None or len(ctx.attempts) >= len(ctx.route.targets):
            return proxy.STOP
        return proxy.Attempt(ctx.route.targets[len(ctx.attempts)])


async def start(floodgate: Any, router: dict[str, Any] | None = None, *, plugins: tuple[Any, ...] = (),
                aliases: dict[str, str] | None = None) -> Any:
    return await floodgate(plugins=[RouterPlugin(), *plugins], plugin_settings={"router": router or ROUTER},
                           aliases=ALIASES if aliases is None else aliases)


def last_body(mock_upstream: Any) -> dict[str, Any]:
    return mock_upstream.stats.requests[-1].body


# --- routing -------------------------------------------------------------------

THREE_TIERS = [
    ("你好，在吗？", "simple", "deepseek-v3.2", "default"),
    ("这款手机和那款有什么区别?", "standard", "gemini-2.5-flash", "compare"),
    ("有什么耳机推荐吗", "standard", "gemini-2.5-flash", "compare"),
    ("为什么我的退款还没到账？", "complex", "gpt-4.1", "reasoning"),
    ("帮我计算一下满减后的价格", "complex", "gpt-4.1", "reasoning"),
    ("我想了解一下这件商品的情况。" * 40, "complex", "gpt-4.1", "long"),
]


async def test_selector_routes_three_tiers(floodgate: Any, mock_upstream: Any) -> None:
    gw = await start(floodgate)
    client = gw.openai()
    for message, route, model, rule in THREE_TIERS:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=user(message))
        assert raw.headers["x-floodgate-route"] == route, message
        assert raw.headers["x-floodgate-model"] == model, message
        assert raw.headers["x-floodgate-route-rule"] == rule, message
        assert last_body(mock_upstream)["model"] == model
        completion = raw.parse()
        assert completion.model == model and completion.choices[0].message.content
    text = await gw.metrics()
    assert 'floodgate_router_decisions_total{route="standard",rule="compare"} 2.0' in text
    assert 'floodgate_router_decisions_total{route="simple",rule="default"} 1.0' in text
    assert 'floodgate_router_decisions_total{route="complex",rule="long"} 1.0' in text


async def test_alias_to_selector_direct_route_and_explicit_model(floodgate: Any, mock_upstream: Any) -> None:
    gw = await start(floodgate)
    client = gw.openai()
    # An existing client's model name, aliased to the selector, is classified.
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                 messages=user("分析一下这两个方案"))
    assert (raw.headers["x-floodgate-route"], raw.headers["x-floodgate-model"]) == ("complex", "gpt-4.1")
    # A route named directly is that tier, whatever the message says.
    raw = await client.chat.completions.with_raw_response.create(model="simple", messages=user("为什么?"))
    assert (raw.headers["x-floodgate-route"], raw.headers["x-floodgate-model"]) == ("simple", "deepseek-v3.2")
    assert raw.headers["x-floodgate-route-rule"] == "requested"
    # An explicit catalogue model bypasses the router: the body is forwarded as the client sent it.
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=user("你好"))
    assert (raw.headers["x-floodgate-route"], raw.headers["x-floodgate-model"]) == ("gpt-4.1", "gpt-4.1")
    assert "x-floodgate-route-rule" not in raw.headers
    assert last_body(mock_upstream) == {"model": "gpt-4.1", "messages": user("你好")}
    # Unknown names are still the core's 404.
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-5-turbo", messages=user("hi"))


async def test_english_keywords_are_case_insensitive(floodgate: Any, mock_upstream: Any) -> None:
    client = (await start(floodgate)).openai()
    for text, model in [("WHY is my parcel late?", "gpt-4.1"),
                        ("please compare plan A and B", "gemini-2.5-flash"),
                        ("Where is my parcel?", "deepseek-v3.2")]:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=user(text))
        assert raw.headers["x-floodgate-model"] == model, text
        assert last_body(mock_upstream)["model"] == model
    # Only the last user message is matched.
    messages = [*user("为什么还没发货?"), {"role": "assistant", "content": "正在为您查询。"}, *user("好的谢谢")]
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert raw.headers["x-floodgate-route"] == "simple"


async def test_features_and_turns(floodgate: Any, mock_upstream: Any) -> None:
    client = (await start(floodgate)).openai()
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=user("查一下物流"),
                                                                 tools=TOOLS)
    assert (raw.headers["x-floodgate-model"], raw.headers["x-floodgate-route-rule"]) == ("gpt-4.1", "agentic")
    assert last_body(mock_upstream)["tools"] == TOOLS  # forwarded untouched
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=user("给我订单的JSON"), response_format={"type": "json_object"})
    assert raw.headers["x-floodgate-route-rule"] == "agentic"
    image = [{"role": "user", "content": [
        {"type": "text", "text": "这件衣服是什么颜色"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=image)
    assert raw.headers["x-floodgate-model"] == "gemini-2.5-flash"
    assert raw.headers["x-floodgate-route-rule"] == "vision"
    turns: list[dict[str, Any]] = []
    for i in range(4):
        turns += [*user(f"第{i}个问题"), {"role": "assistant", "content": "好的"}]
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=turns[:-1])
    assert raw.headers["x-floodgate-route-rule"] == "chatty"
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=turns[:-3])
    assert raw.headers["x-floodgate-route-rule"] == "default"  # three turns


async def test_max_tokens_default_and_cap(floodgate: Any, mock_upstream: Any) -> None:
    client = (await start(floodgate)).openai()
    await client.chat.completions.create(model="simple", messages=user("hi"))
    assert last_body(mock_upstream)["max_tokens"] == 256
    assert "max_completion_tokens" not in last_body(mock_upstream)
    await client.chat.completions.create(model="simple", messages=user("hi"), max_tokens=4000)
    assert last_body(mock_upstream)["max_tokens"] == 512
    await client.chat.completions.create(model="simple", messages=user("hi"), max_tokens=100)
    assert last_body(mock_upstream)["max_tokens"] == 100
    # The field the client used is capped; it is never translated into the other one.
    await client.chat.completions.create(model="simple", messages=user("hi"), max_completion_tokens=4000)
    body = last_body(mock_upstream)
    assert body["max_completion_tokens"] == 512 and "max_tokens" not in body
    # A tier without limits leaves the request alone.
    await client.chat.completions.create(model="standard", messages=user("hi"))
    assert "max_tokens" not in last_body(mock_upstream)


async def test_system_prompt_and_params(floodgate: Any, mock_upstream: Any) -> None:
    client = (await start(floodgate)).openai()
    messages = [{"role": "system", "content": "回答要简短。"}, *user("我的订单 A123 到哪了？")]
    raw = await client.chat.completions.with_raw_response.create(model="订单查询", messages=messages)
    assert (raw.headers["x-floodgate-route"], raw.headers["x-floodgate-model"]) == ("order", "deepseek-v3.2")
    body = last_body(mock_upstream)
    system = {"role": "system", "content": ROUTER["routes"]["order"]["system_prompt"]}
    assert body["messages"] == [system, *messages]
    assert body["model"] == "deepseek-v3.2"
    await client.chat.completions.create(model="complex", messages=user("hi"), temperature=0.9, seed=7)
    body = last_body(mock_upstream)
    assert body["temperature"] == 0.2 and body["seed"] == 7
    assert body["messages"] == user("hi")


async def test_fallback_targets_get_the_same_overrides(floodgate: Any, mock_upstream: Any) -> None:
    mock_upstream.set_behaviour("deepseek-v3.2", fail_first=1, error_status=503)
    client = (await start(floodgate, plugins=(WalkTargets(),))).openai()
    raw = await client.chat.completions.with_raw_response.create(model="订单查询", messages=user("查订单"))
    assert raw.headers["x-floodgate-route"] == "order"
    assert raw.headers["x-floodgate-model"] == "gemini-2.5-flash"
    first, second = (r.body for r in list(mock_upstream.stats.requests)[-2:])
    assert (first["model"], second["model"]) == ("deepseek-v3.2", "gemini-2.5-flash")
    assert first["messages"][0]["role"] == second["messages"][0]["role"] == "system"
    assert first["messages"] == second["messages"]


async def test_streaming_through_the_router(floodgate: Any, mock_upstream: Any) -> None:
    client = (await start(floodgate)).openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user("为什么这个方案更好？"), stream=True)
    assert (raw.headers["x-floodgate-route"], raw.headers["x-floodgate-model"]) == ("complex", "gpt-4.1")
    stream = raw.parse()
    chunks = [chunk async for chunk in stream]
    assert {c.model for c in chunks} == {"gpt-4.1"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    body = last_body(mock_upstream)
    assert body["stream"] is True and body["temperature"] == 0.2


async def test_responses_and_completions_endpoints(floodgate: Any, mock_upstream: Any) -> None:
    client = (await start(floodgate)).openai()
    response = await client.responses.create(model="订单查询", input="订单 A123 什么时候到？",
                                             instructions="用中文回答。")
    assert response.model == "deepseek-v3.2"
    body = last_body(mock_upstream)
    assert body["instructions"] == ROUTER["routes"]["order"]["system_prompt"] + "\n\n用中文回答。"
    await client.responses.create(model="auto", input="hi")
    body = last_body(mock_upstream)
    assert body["max_output_tokens"] == 256 and "max_tokens" not in body
    completion = await client.completions.create(model="auto", prompt="Why is the sky blue?")
    assert completion.model == "gpt-4.1"
    # Embeddings are never routed: a route name is not an embedding model.
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="auto", input="hi")


# --- tier forcing ---------------------------------------------------------------

async def test_tier_header_allowed_for_force_tier_keys(floodgate: Any, mock_upstream: Any) -> None:
    client = (await start(floodgate, plugins=(KeyAuth(force_tier=True),))).openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user("你好"), extra_headers={"x-floodgate-tier": "complex"})
    assert (raw.headers["x-floodgate-route"], raw.headers["x-floodgate-model"]) == ("complex", "gpt-4.1")
    assert raw.headers["x-floodgate-route-rule"] == "header"
    assert last_body(mock_upstream)["temperature"] == 0.2  # the tier's overrides apply
    # The header wins over an explicit catalogue model too.
    raw = await client.chat.completions.with_raw_response.create(
        model="deepseek-v3.2", messages=user("你好"), extra_headers={"x-floodgate-tier": "standard"})
    assert raw.headers["x-floodgate-route"] == "standard"
    assert raw.headers["x-floodgate-model"] == "gemini-2.5-flash"
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="auto", messages=user("你好"),
                                             extra_headers={"x-floodgate-tier": "complx"})
    assert exc.value.body["code"] == "unknown_tier"
    assert exc.value.body["param"] == "x-floodgate-tier"
    assert exc.value.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("auth", [(), (KeyAuth(force_tier=False),)], ids=["anonymous", "key"])
async def test_tier_header_refused_without_force_tier(floodgate: Any, mock_upstream: Any,
                                                       auth: tuple[Any, ...]) -> None:
    client = (await start(floodgate, plugins=auth)).openai()
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.chat.completions.create(model="auto", messages=user("你好"),
                                             extra_headers={"x-floodgate-tier": "complex"})
    assert exc.value.body["code"] == "tier_forcing_not_allowed"
    assert mock_upstream.stats.total == 0


# --- configuration --------------------------------------------------------------

def errors_of(router: dict[str, Any], aliases: dict[str, str] | None = None, *,
              app: bool = False) -> dict[str, str]:
    """``{path: message}`` of the config errors; ``app=True`` builds the whole app (core checks included)."""
    config = config_from_dict(mock_config("http://127.0.0.1:9", plugin_settings={"router": router},
                                          aliases=aliases or {}))
    with pytest.raises(proxy.ConfigErrors) as exc:
        if app:
            proxy.create_app(config, plugins=[RouterPlugin()], builtins=(), entry_points=False)
        else:
            RouterPlugin().proxy_configure(config, CollectorRegistry())
    return {e.path: e.message for e in exc.value.errors}


def router_with(**changes: Any) -> dict[str, Any]:
    router = copy.deepcopy(ROUTER)
    router.update(changes)
    return router


def test_config_unknown_route_and_models() -> None:
    router = copy.deepcopy(ROUTER)
    router["rules"][3]["route"] = "complx"
    router["routes"]["simple"]["model"] = "deepseek-v9"
    router["routes"]["complex"]["fallbacks"] = ["gemini-2.5-flash", "gpt-5"]
    router["routes"]["standard"]["model"] = "text-embedding-3-small"
    errors = errors_of(router)
    assert errors["plugins.router.rules.3.route"].startswith("unknown route 'complx'")
    assert "did you mean 'complex'" in errors["plugins.router.rules.3.route"]
    assert errors["plugins.router.routes.simple.model"].startswith("unknown model 'deepseek-v9'")
    assert errors["plugins.router.routes.complex.fallbacks.1"].startswith("unknown model 'gpt-5'")
    assert "embedding" in errors["plugins.router.routes.standard.model"]


def test_config_default_required_and_known() -> None:
    router = router_with()
    del router["default"]
    assert "required" in errors_of(router)["plugins.router.default"]
    errors = errors_of(router_with(default="medium"))
    assert errors["plugins.router.default"].startswith("unknown route 'medium'")


def test_config_bad_matchers_and_params() -> None:
    router = copy.deepcopy(ROUTER)
    router["rules"] += [
        {"route": "complex", "keywords": ["a"], "min_turns": 3},  # two matchers
        {"route": "complex"},  # none
        {"route": "complex", "keyword": ["a"]},  # misspelled
        {"route": "complex", "features": ["audio"]},
        {"route": "complex", "keywords": []},
    ]
    router["routes"]["complex"]["params"] = {"model": "gpt-5"}
    router["routes"]["simple"]["max_tokens"] = {"default": 900, "cap": 512}
    errors = errors_of(router)
    assert "exactly one matcher" in errors["plugins.router.rules.6"] and "keywords, min_turns" in errors[
        "plugins.router.rules.6"]
    assert "exactly one matcher" in errors["plugins.router.rules.7"]
    assert "did you mean 'keywords'" in errors["plugins.router.rules.8.keyword"]
    assert "plugins.router.rules.9.features.0" in errors
    assert "plugins.router.rules.10.keywords" in errors
    assert "'model' cannot be overridden" in errors["plugins.router.routes.complex.params"]
    assert "larger than cap" in errors["plugins.router.routes.simple.max_tokens"]
    # Cross-checks run once the block itself is valid.
    router = copy.deepcopy(ROUTER)
    router["rules"] += [{"route": "complex", "name": "compare", "min_turns": 2},
                        {"route": "complex", "name": "default", "min_turns": 2}]
    errors = errors_of(router)
    assert "already the name of rules.2" in errors["plugins.router.rules.6.name"]
    assert "must be" in errors["plugins.router.rules.7.name"]


def test_config_names() -> None:
    router = copy.deepcopy(ROUTER)
    router["routes"]["物流追踪"] = {"model": "deepseek-v3.2"}
    router["routes"]["gpt-4.1"] = {"model": "gpt-4.1"}
    router["routes"]["auto"] = {"model": "gpt-4.1"}
    errors = errors_of(router)
    assert "aliases" in errors["plugins.router.routes.物流追踪"]
    assert "catalogue model" in errors["plugins.router.routes.gpt-4.1"]
    assert "selector" in errors["plugins.router.routes.auto"]
    # Aliases may point at routes and the selector, nothing else the router does not declare.
    assert "aliases.x" in errors_of(ROUTER, aliases={"x": "medium", **ALIASES}, app=True)
    assert "is also a route name" in errors_of(ROUTER, aliases={"simple": "gpt-4.1"})["aliases.simple"]


def test_config_errors_name_the_line() -> None:
    yaml_text = """\
upstreams:
  main: {base_url: "http://127.0.0.1:9"}
models:
  deepseek-v3.2: {upstream: main}
plugins:
  router:
    default: simple
    routes:
      simple: {model: deepseek-v3.2}
    rules:
      - {route: complx, keywords: [为什么]}
"""
    config = proxy.parse_config(yaml_text, source="config.yaml")
    with pytest.raises(proxy.ConfigErrors) as exc:
        proxy.create_app(config, plugins=[RouterPlugin()], builtins=(), entry_points=False)
    (error,) = exc.value.errors
    assert str(error) == ("config.yaml:11 plugins.router.rules.0.route: "
                          "unknown route 'complx' (known routes: simple)")


async def test_selector_name_is_configurable_and_aliases_to_tiers(floodgate: Any, mock_upstream: Any) -> None:
    gw = await start(floodgate, router_with(selector="smart"), aliases={"cheap": "simple", "gpt-4o": "smart"})
    client = gw.openai()
    raw = await client.chat.completions.with_raw_response.create(model="cheap", messages=user("为什么"))
    assert raw.headers["x-floodgate-route"] == "simple"
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=user("为什么"))
    assert raw.headers["x-floodgate-route"] == "complex"
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="auto", messages=user("hi"))


async def test_without_settings_the_router_passes_through(floodgate: Any, mock_upstream: Any) -> None:
    gw = await floodgate(plugins=[RouterPlugin()])
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=user("hi"))
    assert raw.headers["x-floodgate-route"] == "gpt-4.1"
    assert last_body(mock_upstream) == {"model": "gpt-4.1", "messages": user("hi")}


# --- command line and speed -------------------------------------------------------

CLI_YAML = """\
upstreams:
  main: {base_url: "builtin:mock"}
models:
  deepseek-v3.2: {upstream: main}
  gemini-2.5-flash: {upstream: main}
  gpt-4.1: {upstream: main}
aliases:
  gpt-4o-mini: auto
  订单查询: order
plugins:
  router:
    default: simple
    routes:
      simple: {model: deepseek-v3.2, fallbacks: [gemini-2.5-flash], max_tokens: {default: 512, cap: 1024}}
      standard: {model: gemini-2.5-flash, fallbacks: [gpt-4.1, deepseek-v3.2]}
      complex: {model: gpt-4.1, fallbacks: [gemini-2.5-flash]}
      order: {model: deepseek-v3.2, system_prompt: 你是订单查询助手。}
    rules:
      - {name: compare, route: standard, keywords: [区别, 比较, 推荐]}
      - {name: reasoning, route: complex, keywords: [为什么, 分析]}
"""


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="floodgate")
    RouterPlugin().proxy_add_commands(subparsers=parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_route_command(tmp_path: Any, capsys: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CLI_YAML, encoding="utf-8")
    assert run_cli(["route", "--config", str(path), "这款手机和那款有什么区别?"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["route"] == "standard"
    assert lines["rule"].startswith("compare (keywords: 区别, 比较, 推荐")
    assert lines["models"] == "gemini-2.5-flash → gpt-4.1 → deepseek-v3.2"
    assert lines["prompt"].startswith("~") and "tokens" in lines["prompt"]
    assert run_cli(["route", "-c", str(path), "你好"]) == 0
    out = capsys.readouterr().out
    assert "default (no rule matched" in out and "default 512, cap 1024" in out
    assert run_cli(["route", "-c", str(path), "--model", "订单查询", "订单", "A123"]) == 0
    out = capsys.readouterr().out
    assert "order" in out and "你是订单查询助手。" in out and "A123" in out
    assert run_cli(["route", "-c", str(path), "--model", "gpt-4.1", "hi"]) == 0
    assert "not a route" in capsys.readouterr().out
    path.write_text(CLI_YAML.replace("route: complex", "route: complx"), encoding="utf-8")
    assert run_cli(["route", "-c", str(path), "hi"]) == 1
    assert "plugins.router.rules.1.route: unknown route 'complx'" in capsys.readouterr().err


def test_classify_is_pure_and_lazy() -> None:
    router = RouterPlugin()
    rules = [
        {"route": "complex", "features": ["tools", "response_format"]},
        {"route": "standard", "features": ["images"]},
        {"route": "complex", "min_prompt_tokens": 2000},
        {"route": "standard", "keywords": ["区别", "比较", "推荐", "对比", "哪个好", "compare", "recommend"]},
        {"route": "complex", "keywords": ["为什么", "分析", "计算", "方案", "原因", "why", "analyse", "explain"]},
        {"route": "complex", "keywords": ["投诉", "赔偿", "律师", "complaint"]},
        {"route": "standard", "keywords": ["退货", "换货", "售后", "发票"]},
        {"route": "standard", "keywords": ["优惠", "活动", "满减", "优惠券", "双十一"]},
        {"route": "standard", "min_turns": 6},
        {"route": "simple", "max_prompt_tokens": 50},
    ]
    config = config_from_dict(mock_config("http://127.0.0.1:9", plugin_settings={
        "router": router_with(rules=rules)}))
    router.proxy_configure(config, CollectorRegistry())
    body = {"model": "auto", "messages": [{"role": "system", "content": "你是客服。"},
                                          *user("请问我的快递今天能到吗？订单号 20241111")]}
    # Pure: the same body always gets the same decision; the estimate is made only when needed.
    assert router.classify(body) == Decision("simple", "rules.9", proxy.estimate_prompt_tokens(body))
    compare = {"messages": user("这两款有什么区别")}
    # Short: the min_prompt_tokens rule is passed without an estimate.
    assert router.classify(compare) == Decision("standard", "rules.3", None)
    long = {"messages": user("这两款有什么区别" * 300)}
    assert router.classify(long) == Decision("complex", "rules.2", proxy.estimate_prompt_tokens(long))
    assert router.classify({"messages": user("x"), "tools": TOOLS}).rule == "rules.0"

