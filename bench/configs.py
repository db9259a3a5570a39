"""The benchmark's Floodgate configs, its request bodies and its API key.

Two configs, both pointing at one upstream (the mock, an ``http://`` URL):

* **no plugins** — ``plugins.disabled`` lists every built-in plugin and the core's
  access log, ``server.access_log: false``. The model the load asks for
  (:data:`LOAD_MODEL`) is a catalogue model there, so the body is forwarded
  untouched: the core's own floor.
* **full chain** — a realistic production config: ``auth`` with 1,000 keys
  (SHA-256 entries, per-key model globs, priorities, limits and budgets; the load
  uses one of them), ``faq`` with 200 rules none of which matches the benchmark
  prompts, the ``router`` with keyword/length/feature tiers (the load's model is
  an alias of the selector, so every request is classified and rewritten for its
  tier), ``ratelimit`` with limits far above what one machine can send (never
  rejects, never queues), ``retry`` with breakers, and ``cost`` with budgets and
  the SQLite ledger on (a file in a temp dir).

Plugins that are not (yet) registered as built-ins are loaded through
``plugins.modules``; names in ``plugins.disabled`` the loader does not know are
left out (see :func:`validated`), so the configs work while the built-in list
changes. ``python -m bench.configs --upstream URL --out DIR`` writes them (``bench/run.py`` runs
it in a fresh process for each set of servers, so the configs always match the
checkout that ``floodgate serve`` will load).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
from pathlib import Path
from typing import Any

import orjson
import yaml

#: The plugins of the full chain, in the order the issue names them.
CHAIN = ("auth", "faq", "router", "ratelimit", "retry", "cost")
#: What the no-plugin config disables: every built-in plus the core's access log.
DISABLED = (*CHAIN, "degrade", "traffic", "accesslog")
#: The model every benchmark request asks for (an alias of the router's selector in the full chain).
LOAD_MODEL = "gpt-4o-mini"
#: Models the mock must serve: the catalogue, plus LOAD_MODEL for the bare forwarder.
MOCK_MODELS = ("deepseek-v3.2", "gemini-2.5-flash", "gpt-4.1", "claude-sonnet-4.5", LOAD_MODEL)
KEY_COUNT = 1000
FAQ_RULES = 200
#: Which of the 1,000 keys the load uses (one in the middle: no early-exit luck).
LOAD_KEY_INDEX = 617
#: Limits no benchmark can reach: the limiter runs every check and never refuses.
_HUGE_RPS = 10_000_000.0
_HUGE_INT = 10_000_000
_HUGE_TOKENS = 10**13
#: Upstream connections (Floodgate's pool_size, the forwarder's --pool-size): the festival keeps
#: 500 req/s x ~0.5 s = ~250 streams open, more than the shipped 200.
POOL_SIZE = 1000

SYSTEM_PROMPT = ("你是「云集优选」电商平台的智能客服，回答要准确、简洁、礼貌。"
                 "不确定的信息请引导用户联系人工客服。")
#: The benchmark's question: an order look-up no FAQ rule and no router keyword matches.
USER_PROMPT = "你好，我昨天下的订单 20241105-88231 现在到哪里了？麻烦帮我看一下，谢谢。"

_CATALOGUE: dict[str, dict[str, Any]] = {
    "deepseek-v3.2": {"price": {"input": 0.28, "output": 0.42, "cached_input": 0.028},
                      "fallbacks": ["gemini-2.5-flash"]},
    "gemini-2.5-flash": {"price": {"input": 0.30, "output": 2.50, "cached_input": 0.03},
                         "fallbacks": ["deepseek-v3.2"]},
    "gpt-4.1": {"price": {"input": 2.00, "output": 8.00, "cached_input": 0.50},
                "fallbacks": ["claude-sonnet-4.5"]},
    "claude-sonnet-4.5": {"price": {"input": 3.00, "output": 15.00, "cached_input": 0.30},
                          "fallbacks": ["gpt-4.1"]},
}


def api_key(index: int) -> str:
    """The secret of benchmark key ``index`` (deterministic; the configs only hold its SHA-256)."""
    return "fg-bench-" + hashlib.sha256(f"floodgate-bench-key-{index}".encode()).hexdigest()[:40]


def load_key() -> str:
    """The key the benchmark load sends (``Authorization: Bearer ...``)."""
    return api_key(LOAD_KEY_INDEX)


def chat_body(*, stream: bool = False) -> bytes:
    """The chat-completion request every target receives, byte for byte."""
    body: dict[str, Any] = {"model": LOAD_MODEL,
                            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                         {"role": "user", "content": USER_PROMPT}],
                            "temperature": 0.3}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


# -- the configs ----------------------------------------------------------------------------

def _base(upstream_url: str, *, pool_size: int) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": False, "log_level": "warning",
                   "shutdown_timeout": 2},
        "upstreams": {"main": {"base_url": upstream_url.rstrip("/"), "pool_size": pool_size,
                               "stream_options": True,
                               "timeouts": {"connect": 5, "first_byte": 30, "total": 300}}},
        "models": {name: {"upstream": "main", **copy.deepcopy(entry)} for name, entry in _CATALOGUE.items()},
    }


def noplugins_config(upstream_url: str, *, pool_size: int = POOL_SIZE) -> dict[str, Any]:
    """Floodgate with nothing but the core: every built-in plugin and the access log disabled."""
    config = _base(upstream_url, pool_size=pool_size)
    config["models"][LOAD_MODEL] = {"upstream": "main", "price": {"input": 0.15, "output": 0.60}}
    config["plugins"] = {"disabled": list(DISABLED)}
    return config


def full_config(upstream_url: str, ledger_path: str | Path, *, pool_size: int = POOL_SIZE,
                keys: int = KEY_COUNT, faq_rules: int = FAQ_RULES) -> dict[str, Any]:
    """Floodgate with the whole chain on a realistic config (see the module docstring)."""
    config = _base(upstream_url, pool_size=pool_size)
    config["aliases"] = {LOAD_MODEL: "auto", "gpt-4o": "complex"}
    config["plugins"] = {
        "modules": [],  # filled by validated() with the chain plugins that are not built-ins
        "auth": _auth(keys),
        "faq": {"case_sensitive": False, "rules": _faq_rules(faq_rules)},
        "router": _router(),
        "ratelimit": {
            "mode": "queue",
            "queue": {"max_wait_ms": 2000, "max_length": 10_000},
            "global": {"requests_per_second": _HUGE_RPS, "burst": _HUGE_INT, "max_concurrent": _HUGE_INT},
            "per_key": {"requests_per_second": 1_000_000.0, "burst": 1_000_000,
                        "tokens_per_minute": _HUGE_TOKENS, "max_concurrent": 100_000},
            "models": {name: {"tokens_per_minute": _HUGE_TOKENS} for name in _CATALOGUE},
            "upstreams": {"main": {"requests_per_second": _HUGE_RPS, "burst": _HUGE_INT}},
        },
        "retry": {"max_retries": 2, "backoff_base_s": 0.1, "max_backoff_s": 2.0, "deadline_s": 30.0,
                  "breaker": {"failures": 5, "failure_ratio": 0.5, "window_s": 30.0, "min_requests": 20,
                              "cooldown_s": 10.0}},
        "cost": {"default_budget": {"daily_usd": 1_000_000.0, "monthly_usd": 10_000_000.0},
                 "ledger": {"enabled": True, "path": str(ledger_path), "batch_size": 200,
                            "flush_interval_s": 1.0}},
    }
    return config


#: The flaky phase's fixed hedging delay: about twice its upstream's normal time to the first token.
HEDGE_AFTER_MS = 400.0


def hedged_config(upstream_url: str, ledger_path: str | Path, *, after_ms: float | str) -> dict[str, Any]:
    """The full chain with its ``simple`` route (the load's) hedged by the route's fallback."""
    config = full_config(upstream_url, ledger_path)
    config["plugins"]["retry"]["hedge"] = {"routes": ["simple"], "after_ms": after_ms, "min_after_ms": 250,
                                           "max_ratio": 0.1, "to": "next"}
    return config


def _auth(count: int) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for i in range(count):
        entry: dict[str, Any] = {"name": f"shop-{i:04d}",
                                 "sha256": hashlib.sha256(api_key(i).encode()).hexdigest()}
        if i % 4 == 0:
            entry["models"] = [LOAD_MODEL, "gpt-4o", "deepseek-*", "gemini-*"]
        if i % 5 == 0:
            entry["priority"] = i % 3
        if i % 10 == 0:
            entry["rate_limit"] = {"requests_per_second": 50.0 + i, "burst": 100 + i}
        if i % 20 == 0:
            entry["budget"] = {"daily_usd": 50.0, "monthly_usd": 1000.0}
        entries.append(entry)
    # The load's key: every per-key setting set (so every plugin reads them), limits out of reach.
    entries[LOAD_KEY_INDEX].update(
        models=[LOAD_MODEL, "gpt-4o", "deepseek-*", "gemini-*"], priority=5,
        rate_limit={"requests_per_second": 1_000_000.0, "burst": 1_000_000, "tokens_per_minute": _HUGE_TOKENS,
                    "max_concurrent": 100_000},
        budget={"daily_usd": 1_000_000.0, "monthly_usd": 10_000_000.0})
    admin = hashlib.sha256(b"floodgate-bench-admin-key").hexdigest()
    return {"admin_key_sha256": admin, "keys": entries}


# FAQ vocabulary: Chinese e-commerce topics x question forms, plus English twins. The benchmark
# prompt (an order look-up) contains none of the resulting keywords.
_TOPICS = (
    ("退货", "return"), ("换货", "exchange"), ("退款", "refund"), ("发票", "invoice"),
    ("包邮", "free shipping"), ("运费", "shipping fee"), ("优惠券", "coupon"), ("积分", "points"),
    ("会员", "membership"), ("尺码", "size chart"), ("保修", "warranty"), ("安装", "installation"),
    ("营业时间", "opening hours"), ("客服电话", "hotline"), ("货到付款", "cash on delivery"),
    ("分期付款", "instalments"), ("花呗", "huabei"), ("预售", "pre-sale"), ("定金", "deposit"),
    ("尾款", "final payment"), ("赠品", "free gift"), ("礼品卡", "gift card"), ("价保", "price protection"),
    ("以旧换新", "trade-in"), ("七天无理由", "7-day return"), ("破损", "damaged item"),
    ("少件", "missing item"), ("改地址", "change address"), ("自提", "self pick-up"),
    ("门店", "store location"), ("海外直邮", "overseas shipping"), ("关税", "customs duty"),
    ("生日礼", "birthday gift"), ("签到", "daily check-in"), ("直播间", "live stream"),
    ("秒杀", "flash sale"), ("满减", "discount threshold"), ("开箱验货", "unboxing check"),
    ("延保", "extended warranty"), ("拼团", "group buy"),
)
_FORMS = (("政策", "policy"), ("怎么申请", "how to apply"), ("要多久", "how long"),
          ("规则", "rules"), ("流程", "process"))


def _faq_rules(count: int) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for i in range(count):
        (zh, en), (form_zh, form_en) = _TOPICS[i % len(_TOPICS)], _FORMS[(i // len(_TOPICS)) % len(_FORMS)]
        rule: dict[str, Any] = {"name": f"faq-{i:03d}", "any": [zh + form_zh, f"{en} {form_en}"],
                                "answer": f"关于{zh}{form_zh}：请在「我的-订单」中查看，或联系人工客服。"}
        if i % 5 == 1:
            rule["max_length"] = 60
        if i % 7 == 2:
            rule["all"] = [zh]
        if i % 11 == 3:
            rule["exclude"] = ["人工", "投诉"]
        if i % 17 == 4:
            rule["regex"] = r"(怎么|如何|多久|吗)"
        rules.append(rule)
    if count >= 2:  # two regex-only rules (each costs one search per request, as in real configs)
        rules[-2] = {"name": "faq-tracking", "regex": r"^查(快递|物流)\s*[A-Z]{2}\d{10}$",
                     "answer": "请在「我的-订单-物流」中查看实时物流。"}
        rules[-1] = {"name": "faq-greeting", "regex": r"^(你好|您好|在吗|hello|hi)[!！。?？\s]*$",
                     "answer": "您好，请问有什么可以帮您？"}
    return rules


def _router() -> dict[str, Any]:
    return {
        "selector": "auto",
        "default": "simple",
        "routes": {
            "simple": {"model": "deepseek-v3.2", "fallbacks": ["gemini-2.5-flash"],
                       "max_tokens": {"default": 512, "cap": 2048}},
            "complex": {"model": "gpt-4.1", "fallbacks": ["claude-sonnet-4.5"], "max_tokens": {"cap": 4096}},
            "reasoning": {"model": "claude-sonnet-4.5", "fallbacks": ["gpt-4.1"],
                          "max_tokens": {"default": 2048, "cap": 8192}},
        },
        "rules": [
            {"name": "tools", "route": "complex", "features": ["tools", "response_format"]},
            {"name": "long", "route": "complex", "min_prompt_tokens": 2000},
            {"name": "reasoning", "route": "reasoning",
             "keywords": ["为什么", "分析", "怎么算", "最划算", "最省钱", "计算", "推理", "why", "explain",
                          "analyse", "analyze", "calculate", "step by step"]},
            {"name": "comparison", "route": "complex",
             "keywords": ["区别", "对比", "哪个好", "哪个更", "差别", "difference", "compare", "versus"]},
            {"name": "conversation", "route": "complex", "min_turns": 6},
        ],
    }


# -- validation against the loader in this checkout --------------------------------------

def builtin_plugin_names() -> set[str]:
    """Names of the plugins ``floodgate serve`` loads without being told (built-ins, entry points)."""
    from proxy.loader import BUILTIN_PLUGINS, _entry_point_refs, load_object, plugin_name

    names: set[str] = set()
    for ref in (*BUILTIN_PLUGINS, *(value for _, value in _entry_point_refs())):
        try:
            names.add(plugin_name(load_object(ref), ref))
        except Exception:  # a broken plugin is create_app's error to report
            continue
    return names


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` adjusted to this checkout's loader, then checked with ``proxy.create_app``.

    Chain plugins that are not built-ins go into ``plugins.modules``; names in
    ``plugins.disabled`` the loader reports as unknown (a plugin that is not
    loaded anyway, e.g. ``accesslog`` while ``server.access_log`` is false) are
    dropped. Raises :class:`proxy.ConfigErrors` for anything else.
    """
    import proxy
    from proxy.config import config_from_dict

    config = copy.deepcopy(config)
    plugins = config.setdefault("plugins", {})
    if "modules" in plugins:
        builtins = builtin_plugin_names()
        plugins["modules"] = [f"plugins.{name}" for name in CHAIN if name not in builtins]
    for _ in range(2):
        try:
            proxy.create_app(config_from_dict(config))
            return config
        except proxy.ConfigErrors as exc:
            unknown = {str(e.path) for e in exc.errors if str(e.path).startswith("plugins.disabled.")
                       and "no plugin is named" in str(e)}
            if not unknown or len(unknown) != len(exc.errors):
                raise
            disabled = plugins.get("disabled", [])
            plugins["disabled"] = [n for i, n in enumerate(disabled) if f"plugins.disabled.{i}" not in unknown]
    proxy.create_app(config_from_dict(config))
    return config


def write(config: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the benchmark's Floodgate configs.")
    parser.add_argument("--upstream", required=True, help="the mock's base URL, e.g. http://127.0.0.1:9000/v1")
    parser.add_argument("--out", required=True, help="directory for noplugins.yaml, full.yaml and the ledger")
    parser.add_argument("--prefix", default="", help="file name prefix, e.g. 'stream-'")
    parser.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="server.event_loop of every config (bench/run.py passes the forwarder's)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ledger = out / f"{args.prefix}usage.db"
    for name, data in (("noplugins", noplugins_config(args.upstream)), ("full", full_config(args.upstream, ledger)),
                       ("hedged", hedged_config(args.upstream, ledger, after_ms=HEDGE_AFTER_MS)),
                       ("hedged-p95", hedged_config(args.upstream, ledger, after_ms="p95"))):
        data["server"]["event_loop"] = args.event_loop
        print(write(validated(data), out / f"{args.prefix}{name}.yaml"))
    print(f"load key (shop-{LOAD_KEY_INDEX:04d}): {load_key()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
