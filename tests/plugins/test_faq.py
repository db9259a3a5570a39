"""The faq plugin: rule-based answers without any upstream call."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

import proxy
from plugins.faq import FaqPlugin, Matcher, Rule, RuleSettings

HOURS = "客服在线时间为每天 9:00-22:00,节假日不休。"
RETURN = "订单签收后 7 天内可在「我的订单」中申请退货,选择退货原因并寄回商品即可。"
REFUND = "退货商品签收后 1-3 个工作日内原路退款。"
SHIPPING = "全场满 99 元包邮(偏远地区除外)。"
INVOICE = "支持开具电子发票,请在订单详情页申请。"
COUPON = "优惠券请在结算页选择使用,过期后无法恢复。"
RULES: list[dict[str, Any]] = [
    {"name": "opening-hours", "any": ["营业时间", "几点开门", "几点上班", "Opening Hours"], "max_length": 40,
     "answer": HOURS},
    {"name": "how-to-return", "any": ["怎么退货", "如何退货", "退货流程"], "exclude": ["运费"],
     "answer": RETURN},
    {"name": "refund-time", "all": ["退款"], "any": ["多久", "几天", "什么时候"], "answer": REFUND},
    {"name": "free-shipping", "any": ["包邮"], "exclude": ["偏远", "新疆", "西藏"], "max_length": 20,
     "answer": SHIPPING, "model": "faq-bot"},
    {"name": "invoice", "regex": r"(开|要|能).{0,3}发票", "answer": INVOICE},
    {"name": "coupon", "any": ["优惠券"], "max_length": 16, "answer": COUPON},
]
LONG_COUPON = "我想买三件商品,总价是500元,能用满400减50的优惠券吗?"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "你是电商客服。"}, {"role": "user", "content": text}]


async def start(floodgate: Any, rules: list[dict[str, Any]] = RULES, **kwargs: Any) -> Any:
    plugins = [FaqPlugin(), *kwargs.pop("plugins", ())]
    settings = {"faq": {"rules": rules, **kwargs.pop("faq", {})}}
    return await floodgate(plugins=plugins, plugin_settings=settings, **kwargs)


# -- OpenAI's own schemas for the bodies the core renders for our replies -------------





async def raw_events(gw: Any, path: str, body: dict[str, Any]) -> tuple[Any, list[Any]]:
    resp = await gw.client.post(path, json=body)
    text = await resp.text()
    lines = [line for line in text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), text  # no event:/id: lines
    assert lines[-1] == "data: [DONE]"
    return resp, [orjson.loads(line[6:]) for line in lines[:-1]]


# -- answering ----------------------------------------------------------------------

async def test_hit_is_answered_without_upstream(floodgate, mock_upstream, openai_schema):
    gw = await start(floodgate)
    client = gw.openai()
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=user("怎么退货?"))
    r = raw.parse()
    assert r.object == "chat.completion" and r.model == "gpt-4.1"
    assert r.choices[0].message.content == RETURN and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert raw.headers["x-floodgate-short-circuit"] == "faq/how-to-return"
    openai_schema("CreateChatCompletionResponse", orjson.loads(raw.content))
    # A rule's `model` is the reply's model field.
    r = await client.chat.completions.create(model="gpt-4.1", messages=user("你们包邮吗?"))
    assert r.choices[0].message.content == SHIPPING and r.model == "faq-bot"
    assert mock_upstream.stats.total == 0


@pytest.mark.parametrize("include_usage", [False, True])
async def test_hit_streams(floodgate, mock_upstream, openai_schema, include_usage):
    gw = await start(floodgate)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await gw.openai().chat.completions.create(model="deepseek-v3.2", messages=user("请问营业时间?"),
                                                        stream=True, **options)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HOURS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert usage_chunks == [chunks[-1]] and chunks[-1].choices == []
        assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    else:
        assert usage_chunks == []
    body = {"model": "deepseek-v3.2", "messages": user("请问营业时间?"), "stream": True, **options}
    resp, events = await raw_events(gw, "/v1/chat/completions", body)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["x-floodgate-short-circuit"] == "faq/opening-hours"
    for event in events:
        openai_schema("CreateChatCompletionStreamResponse", event)
    assert mock_upstream.stats.total == 0


async def test_legacy_completions_are_answered_too(floodgate, mock_upstream, openai_schema):
    gw = await start(floodgate)
    client = gw.openai()
    raw = await client.completions.with_raw_response.create(model="gpt-4.1", prompt="能开发票吗")
    r = raw.parse()
    assert r.object == "text_completion" and r.choices[0].text == INVOICE
    assert raw.headers["x-floodgate-short-circuit"] == "faq/invoice"
    openai_schema("CreateCompletionResponse", orjson.loads(raw.content))
    stream = await client.completions.create(model="gpt-4.1", prompt="能开发票吗", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == INVOICE
    assert mock_upstream.stats.total == 0


async def test_miss_goes_upstream(floodgate, mock_upstream):
    gw = await start(floodgate)
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=user("这款和那款有什么区别?"))
    assert "x-floodgate-short-circuit" not in raw.headers
    assert raw.parse().choices[0].message.content not in {HOURS, RETURN, REFUND, SHIPPING, INVOICE, COUPON}
    assert mock_upstream.stats.total == 1


@pytest.mark.parametrize(("text", "rule"), [
    # any
    ("营业时间是几点到几点?", "opening-hours"),
    ("你们几点开门", "opening-hours"),
    # all + any: both keywords needed
    ("退款多久到账?", "refund-time"),
    ("多久能到?", None),
    ("退款到哪里了", None),
    # exclude
    ("退货流程是怎样的?", "how-to-return"),
    ("退货流程是怎样的?需要我自己出运费吗?", None),
    ("包邮吗?", "free-shipping"),
    ("新疆也包邮吗?", None),
    # regex
    ("可以开电子发票吗", "invoice"),
    ("要发票", "invoice"),
    ("发票抬头写错了", None),
    # max_length
    ("优惠券怎么用?", "coupon"),
    (LONG_COUPON, None),
    ("请问营业时间" + "。" * 40, None),
])
async def test_each_condition(floodgate, mock_upstream, text, rule):
    gw = await start(floodgate)
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=user(text))
    assert raw.headers.get("x-floodgate-short-circuit") == (f"faq/{rule}" if rule else None)
    assert mock_upstream.stats.total == (0 if rule else 1)


async def test_long_coupon_question_goes_to_the_model(floodgate, mock_upstream):
    gw = await start(floodgate)
    client = gw.openai()
    r = await client.chat.completions.create(model="gpt-4.1", messages=user(LONG_COUPON))
    assert r.choices[0].message.content != COUPON and mock_upstream.stats.total == 1
    r = await client.chat.completions.create(model="gpt-4.1", messages=user("优惠券过期了还能用吗?"))
    assert r.choices[0].message.content == COUPON and mock_upstream.stats.total == 1


async def test_first_rule_in_config_order_wins(floodgate):
    rules = [
        {"name": "general", "any": ["退"], "answer": "general"},
        {"name": "specific", "any": ["怎么退货"], "answer": "specific"},
    ]
    gw = await start(floodgate, rules)
    r = await gw.openai().chat.completions.create(model="gpt-4.1", messages=user("怎么退货"))
    assert r.choices[0].message.content == "general"
    gw = await start(floodgate, rules[::-1])
    r = await gw.openai().chat.completions.create(model="gpt-4.1", messages=user("怎么退货"))
    assert r.choices[0].message.content == "specific"


async def test_only_the_last_user_message_counts(floodgate, mock_upstream):
    gw = await start(floodgate)
    messages = [*user("包邮吗?"), {"role": "assistant", "content": SHIPPING},
                {"role": "user", "content": "那这款和那款有什么区别?"}]
    r = await gw.openai().chat.completions.create(model="gpt-4.1", messages=messages)
    assert r.choices[0].message.content != SHIPPING and mock_upstream.stats.total == 1


@pytest.mark.parametrize("extra", [
    {"messages": [*user("包邮吗?"), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "shipping", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "包邮"}]},
    {"response_format": {"type": "json_object"}},
    {"n": 2},
    {"logprobs": True},
    {"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
], ids=["tool-result-last", "json-mode", "n2", "logprobs", "tool-required"])
async def test_requests_a_canned_answer_would_break_go_upstream(floodgate, mock_upstream, extra):
    gw = await start(floodgate)
    body = {"model": "gpt-4.1", "messages": user("包邮吗?"), **extra}
    resp = await gw.client.post("/v1/chat/completions", json=body)
    assert "x-floodgate-short-circuit" not in resp.headers
    assert mock_upstream.stats.total == 1


async def test_case_insensitive_by_default_for_english(floodgate, mock_upstream):
    rules = [{"name": "returns", "any": ["Return Policy"], "regex": r"\bPOLICY\b", "answer": "30 days."}]
    gw = await start(floodgate, rules)
    client = gw.openai()
    for text in ("what is your RETURN policy?", "Return Policy please"):
        assert (await client.chat.completions.create(model="gpt-4.1", messages=user(text))
                ).choices[0].message.content == "30 days."
    gw = await start(floodgate, rules, faq={"case_sensitive": True})
    r = await gw.openai().chat.completions.create(model="gpt-4.1", messages=user("what is your return policy?"))
    assert r.choices[0].message.content != "30 days." and mock_upstream.stats.total == 1


async def test_no_rules_is_a_pass_through(floodgate, mock_upstream):
    gw = await start(floodgate, [])
    await gw.openai().chat.completions.create(model="gpt-4.1", messages=user("包邮吗?"))
    assert mock_upstream.stats.total == 1


# -- metrics ------------------------------------------------------------------------

def metric(text: str, name: str, **labels: str) -> float | None:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}{{{re.escape(label_text)}}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


class TierRouter:
    """A route plugin like the router: ``auto`` means claude-sonnet-4.5; it notes its choice.

    Registered before the faq plugin, its ``proxy_finished`` runs after faq's (pluggy calls
    the last registered first).
    """

    name = "tier-router"

    def __init__(self) -> None:
        self.seen: list[tuple[Any, dict[str, Any], dict[str, str]]] = []

    @proxy.hookimpl
    def proxy_route(self, ctx: proxy.RequestContext) -> proxy.Route | None:
        if ctx.model != "auto":
            return None
        ctx.state["tier-router.tier"] = "smart"
        ctx.response_headers["x-tier"] = "smart"
        return proxy.Route(name="auto", targets=(ctx.config.target("claude-sonnet-4.5"),))

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        self.seen.append((ctx.route, dict(ctx.state), dict(ctx.response_headers)))


async def test_hits_and_saved_cost_metrics(floodgate, mock_upstream):
    router = TierRouter()
    gw = await floodgate(plugins=[router, FaqPlugin()], plugin_settings={"faq": {"rules": RULES}},
                         aliases={"shop-bot": "deepseek-v3.2"})
    assert gw.app[proxy.HOOKS].implementations(proxy.hookspecs.proxy_finished)[:2] == ("faq", "tier-router")
    client = gw.openai()
    r1 = await client.chat.completions.create(model="gpt-4.1", messages=user("包邮吗?"))
    r2 = await client.chat.completions.create(model="gpt-4.1", messages=user("怎么退货"))
    r3 = await client.chat.completions.create(model="shop-bot", messages=user("怎么退货"))  # alias: priced as its model
    r4 = await client.chat.completions.create(model="auto", messages=user("怎么退货"))  # the route plugin's choice
    await client.chat.completions.create(model="no-such-model", messages=user("怎么退货"))  # answered, nothing saved
    text = await gw.metrics()
    assert metric(text, "floodgate_faq_hits_total", rule="how-to-return") == 4
    assert metric(text, "floodgate_faq_hits_total", rule="free-shipping") == 1
    assert metric(text, "floodgate_faq_hits_total", rule="invoice") == 0  # every rule is listed
    gpt = sum(r.usage.prompt_tokens * 2.00 + r.usage.completion_tokens * 8.00 for r in (r1, r2)) / 1e6
    deepseek = (r3.usage.prompt_tokens * 0.28 + r3.usage.completion_tokens * 0.42) / 1e6
    assert metric(text, "floodgate_faq_saved_usd_total", model="gpt-4.1") == pytest.approx(gpt, rel=1e-9)
    assert metric(text, "floodgate_faq_saved_usd_total", model="deepseek-v3.2") == pytest.approx(deepseek, rel=1e-9)
    claude = (r4.usage.prompt_tokens * 3.00 + r4.usage.completion_tokens * 15.00) / 1e6
    assert metric(text, "floodgate_faq_saved_usd_total", model="claude-sonnet-4.5") == pytest.approx(claude, rel=1e-9)
    assert "no-such-model" not in text
    # Working out the saving left the request's record alone: no route, no notes of the route plugin.
    assert [seen[0] for seen in router.seen] == [None] * 5
    assert all("tier-router.tier" not in state and "x-tier" not in headers for _, state, headers in router.seen)
    assert mock_upstream.stats.total == 0


# -- configuration ------------------------------------------------------------------

BASE_YAML = """\
upstreams:
  main: {base_url: "http://127.0.0.1:1"}
models:
  gpt-4.1: {upstream: main}
plugins:
  faq:
    rules:
"""


def config_errors(rules_yaml: str) -> dict[str, proxy.ConfigError]:
    config = proxy.parse_config(BASE_YAML + rules_yaml, source="config.yaml")
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.create_app(config, plugins=[FaqPlugin()], builtins=(), entry_points=False)
    return {e.path: e for e in info.value.errors}


def test_rule_errors_name_their_path():
    errors = config_errors("""\
      - {name: hours, any: [营业时间], answer: "9-22"}
      - {name: bad-regex, regex: "(退货", answer: x}
      - {name: hours, any: [包邮], answer: x}
      - {name: nothing, exclude: [运费], answer: x}
""")
    assert set(errors) == {"plugins.faq.rules.1.regex", "plugins.faq.rules.2.name", "plugins.faq.rules.3"}
    regex = errors["plugins.faq.rules.1.regex"]
    assert "invalid regular expression: missing ), unterminated subpattern" in regex.message
    assert str(regex).startswith("config.yaml:9 plugins.faq.rules.1.regex")
    assert "duplicate rule name 'hours'" in errors["plugins.faq.rules.2.name"].message
    assert errors["plugins.faq.rules.3"].message == "a rule needs at least one of any, all or regex"
    assert errors["plugins.faq.rules.3"].line == 11


def test_rule_field_errors():
    errors = config_errors("""\
      - {name: "营业时间", any: [x], answer: x}
      - {name: b, any: [""], answer: x, max_length: 0}
      - {name: c, any: [x]}
      - {name: d, anyy: [x], answer: x}
""")
    assert errors["plugins.faq.rules.0.name"].message.startswith("must be 1-64 characters")
    assert "plugins.faq.rules.1.any.0" in errors
    assert errors["plugins.faq.rules.1.max_length"].message == "must be greater than 0"
    assert errors["plugins.faq.rules.2.answer"].message == "required key is missing"
    assert errors["plugins.faq.rules.3.anyy"].message == "unknown key (did you mean 'any'?)"


# -- the matcher itself -------------------------------------------------------------

def matcher(*rules: dict[str, Any], fold: bool = True) -> Matcher:
    return Matcher([Rule(RuleSettings(answer="x", **r), None, fold) for r in rules], fold)


def test_overlapping_and_nested_keywords_are_all_found():
    m = matcher({"name": "a", "all": ["退货", "货款"]}, {"name": "b", "all": ["运费险", "费险", "运费"]})
    assert m.match("退货款").name == "a"  # overlapping: 退[货]款
    assert m.match("买运费险").name == "b"  # nested in the longest keyword at a position
    assert m.match("退货") is None and m.match("运 费险") is None


def test_no_match_with_200_rules():
    """200 rules that match none of the messages (the benchmark's setting; its speed is measured in bench/)."""
    rules = [{"name": f"r{i}", "any": [f"商品{i}号", f"活动{i}期", f"SKU-{i}"], "exclude": ["人工"]}
             for i in range(200)]
    m = matcher(*rules)
    messages = ["你们客服几点上班?晚上还有人吗?", LONG_COUPON, "iPhone 16 和 iPhone 16 Plus 除了尺寸还有什么区别?"]
    assert all(m.match(text) is None for text in messages)
    assert m.match("活动12期还有吗").name == "r12"
