"""The prompts of ``floodgate loadtest``: JSONL prompt files (``--prompts``) and the built-in mix.

A prompts file holds one JSON object per line: ``{"messages": [...]}`` (a chat) or
``{"prompt": "..."}`` (one user message), with an optional ``weight`` and ``category``.

The built-in mix is Chinese e-commerce customer service, shaped like a shop's traffic before a
shopping festival: mostly short FAQ questions (opening hours, returns, free shipping), then order
and delivery look-ups, product comparisons, and a few questions that need arithmetic (stacking 满减
discounts). Each entry is ``(category, weight, messages)``; a request picks an entry with
probability proportional to its weight. Every conversation starts with the same system prompt, as
a real shop's bot would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .options import UsageError

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_PROMPT_KEYS = ("messages", "prompt", "weight", "category")
_MAX_REPORTED_ERRORS = 20


class PromptFileError(UsageError):
    """A prompts file with invalid lines; ``errors`` holds one ``FILE:LINE: message`` each."""

    def __init__(self, errors: list[str]) -> None:
        shown = errors[:_MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        super().__init__("\n".join(shown + ([f"... and {more} more"] if more else [])))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Prompt:
    """One conversation to send; picked with probability proportional to ``weight``."""

    messages: list[dict[str, Any]]
    weight: float = 1.0
    category: str = "default"


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list of {"role": ..., "content": ...} objects'
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] must be an object"
        if m.get("role") not in _ROLES:
            return f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}"
        content = m.get("content")
        if not isinstance(content, (str, list)):
            return f"messages[{i}].content must be a string or a list of content parts"
    return None


def _parse_prompt(obj: Any) -> Prompt | str:
    """A Prompt, or an error message."""
    if not isinstance(obj, dict):
        return 'expected a JSON object with "messages" or "prompt"'
    unknown = [k for k in obj if k not in _PROMPT_KEYS]
    if unknown:
        return f"unknown key {unknown[0]!r} (allowed: {', '.join(_PROMPT_KEYS)})"
    if ("messages" in obj) == ("prompt" in obj):
        return 'give exactly one of "messages" (a chat) or "prompt" (one user message)'
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            return '"prompt" must be a non-empty string'
        messages = [{"role": "user", "content": obj["prompt"]}]
    else:
        if (problem := _check_messages(obj["messages"])) is not None:
            return problem
        messages = obj["messages"]
    weight = obj.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 \
            or not math.isfinite(weight):
        return '"weight" must be a positive number'
    category = obj.get("category", "default")
    if not isinstance(category, str) or not category:
        return '"category" must be a non-empty string'
    return Prompt(messages, float(weight), category)


def parse_prompts(lines: Sequence[str], source: str = "<prompts>") -> list[Prompt]:
    """Parse JSONL prompt lines (``{"messages": [...]}`` or ``{"prompt": "..."}``, optional
    ``weight`` and ``category``; blank lines skipped). Raises :class:`PromptFileError`
    listing every bad line as ``source:line: message``."""
    prompts: list[Prompt] = []
    errors: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed = _parse_prompt(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            parsed = f"not valid JSON ({exc})"
        if isinstance(parsed, str):
            errors.append(f"{source}:{number}: {parsed}")
        else:
            prompts.append(parsed)
    if not prompts and not errors:
        errors.append(f"{source}: no prompts (expected one JSON object per line)")
    if errors:
        raise PromptFileError(errors)
    return prompts


def load_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Read and validate a JSONL prompts file (see :func:`parse_prompts`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError([f"{path}: cannot read prompts: {exc}"]) from None
    return parse_prompts(text.splitlines(), str(path))


def _builtin() -> list[Prompt]:
    return [Prompt(messages, weight, category) for category, weight, messages in builtin_prompts()]


SYSTEM_PROMPT = ("你是「云集优选」电商平台的智能客服，回答要准确、简洁、礼貌。"
                 "不确定的信息请引导用户联系人工客服。")

# Share of the traffic per category (the weight of one prompt = share / prompts in category).
CATEGORY_SHARES: dict[str, float] = {"faq": 0.40, "order": 0.30, "comparison": 0.15,
                                     "reasoning": 0.15}

_FAQ = (
    "你们客服几点上班？晚上还有人吗？",
    "请问营业时间是几点到几点？周末营业吗？",
    "退货流程是怎样的？需要我自己出运费吗？",
    "七天无理由退货怎么申请？",
    "买了衣服不合适可以换尺码吗？",
    "你们包邮吗？满多少包邮？",
    "偏远地区比如新疆西藏也包邮吗？",
    "支持货到付款吗？",
    "可以开发票吗？电子发票还是纸质发票？",
    "双十一的活动什么时候开始？",
    "优惠券过期了还能用吗？",
    "怎么修改收货地址？",
    "会员积分怎么兑换？",
    "退款一般多久到账？",
)
_ORDER = (
    "我的订单 20241105-88231 什么时候发货？",
    "快递三天没更新物流了，单号 SF1234567890，帮我查一下。",
    "订单显示已签收，但我没收到货怎么办？",
    "我想取消刚下的订单，还没发货，可以吗？",
    "收到的商品少了一件，订单号 20241103-55102。",
    "为什么我的订单一直显示待付款？我已经付过钱了。",
    "能不能帮我把订单改成发顺丰？我愿意补差价。",
    "预售商品的尾款什么时候付？付完多久发货？",
)
_COMPARISON = (
    "这款和那款有什么区别？就是 A1 扫地机器人和 A1 Pro。",
    "iPhone 16 和 iPhone 16 Plus 除了尺寸还有什么区别？",
    "羽绒服的 90 绒和 80 绒差别大吗？哪个更保暖？",
    "这两款空气炸锅，5 升和 6.5 升的，三口之家买哪个合适？",
    "国行版和港版的耳机有什么区别？保修一样吗？",
    "旗舰店和专卖店买的东西有区别吗？",
)
_REASONING = (
    "满 300 减 50，可以跨店叠加。我买了 189 元的外套和 99 元的裤子，还差多少凑单最划算？",
    "店铺券满 200 减 20，平台券满 299 减 40，我购物车有 158、76 和 45 元三件，怎么下单最省钱？",
    "每满 200 减 30 上不封顶，我要买 4 件 129 元的 T 恤，分两单买和一单买各付多少钱？",
    "第二件半价，第三件 0 元，三件分别 99、129、159 元，系统怎么算价格？我实际付多少？",
    "定金 50 抵 150，尾款再满 500 减 60，商品价格 899，我最后一共要付多少钱？",
    "跨店满减每满 300 减 50，我买了 268 元的鞋，凑一件 39 元的袜子值不值？请算一下实际折扣率。",
)
# A few multi-turn conversations: the follow-up question carries the context.
_ORDER_TURNS: tuple[tuple[str, str, str], ...] = (
    ("我昨天买的电饭煲还没发货。", "您好，请提供一下订单号，我帮您查询。",
     "订单号是 20241106-10293，能今天发吗？"),
    ("我要退货。", "好的，请问是哪一笔订单、什么原因呢？",
     "订单 20241101-77310，鞋子尺码偏小，想退掉重新买大一码。"),
)


def _conversation(*turns: str) -> list[dict[str, Any]]:
    roles = ("user", "assistant")
    return [{"role": "system", "content": SYSTEM_PROMPT}] + [
        {"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def builtin_prompts() -> list[tuple[str, float, list[dict[str, Any]]]]:
    """The mix as ``(category, weight, messages)`` entries; weights sum to 1."""
    groups: dict[str, list[list[dict[str, Any]]]] = {
        "faq": [_conversation(q) for q in _FAQ],
        "order": [_conversation(q) for q in _ORDER] + [_conversation(*t) for t in _ORDER_TURNS],
        "comparison": [_conversation(q) for q in _COMPARISON],
        "reasoning": [_conversation(q) for q in _REASONING],
    }
    return [(category, CATEGORY_SHARES[category] / len(items), messages)
            for category, items in groups.items() for messages in items]
