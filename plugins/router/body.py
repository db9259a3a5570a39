"""What the rules look at in a request body: pure functions, no configuration.

The body is a chat (``messages``), Responses (``input``) or legacy completions
(``prompt``) request as the client sent it, so nothing here trusts its shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import proxy

__all__ = ["FEATURE_BITS", "features", "keyword_pattern", "prompt_tokens_bound", "user_turns"]

#: Bits of :func:`features`, by the feature's name in a rule.
FEATURE_BITS = {"tools": 1, "response_format": 2, "images": 4}
_IMAGE_PARTS = ("image_url", "input_image")  # chat, Responses


def user_turns(body: Mapping[str, Any]) -> int:
    items = proxy.conversation(body)
    if items is None:
        return 1 if body.get("prompt", body.get("input")) else 0
    return sum(1 for item in items if isinstance(item, dict) and item.get("role") == "user")


def features(body: Mapping[str, Any]) -> int:
    """The request's features as a bit mask of ``FEATURE_BITS``."""
    found = 0
    if body.get("tools") or body.get("functions"):
        found |= 1
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object"):
        found |= 2
    for item in proxy.conversation(body) or ():
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in _IMAGE_PARTS
                                             for p in content):
            found |= 4
            break
    return found


def keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str]:
    """One alternation per rule, of lower-cased keywords: classify() lower-cases the
    text once instead of every pattern paying for ``re.IGNORECASE`` (4x slower)."""
    alternatives = sorted({k.lower() for k in keywords}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, alternatives)))


def prompt_tokens_bound(body: Mapping[str, Any]) -> int | None:
    """A cheap upper bound of the prompt tokens of a plain chat body, or ``None``.

    Any tokenizer works on bytes at worst, so a character is at most 4 tokens
    (UTF-8); the offline estimate gives at most one. Knowing the bound is below a
    ``min_prompt_tokens`` threshold spares the full estimate for short messages,
    which is most of the traffic. Bodies with tools, content parts or tool calls
    get ``None`` (estimate them exactly).
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or body.get("tools") or body.get("functions"):
        return None
    total = 3
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if "tool_calls" in message or not (content is None or isinstance(content, str)):
            return None
        total += 8 + 4 * len(content or "")
    return total
