"""Offline token estimates (of untrusted bodies: any shape is tolerated, never raised on).

Used where an exact count is not available: before a request is sent (routing,
rate-limit reservations) and when an upstream reports no usage. Tokenizers that
download their vocabulary on first use fail on a machine without network, so this
is a heuristic calibrated on BPE tokenizers of current models: one token per CJK
character, about four characters per token for other text, and a small fixed
cost per chat message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .text import content_text

# Per-message framing tokens (role markers) as counted by OpenAI's chat format.
MESSAGE_OVERHEAD = 4
IMAGE_TOKENS = 85  # OpenAI's low-detail image cost: a floor for unknown sizes




def estimate_text_tokens(text: str) -> int:
    """Estimated tokens of a piece of text (CJK and other scripts mixed)."""
    if not text:
        return 0
    length = len(text)
    if text.isascii():
        return max(1, (length + 3) // 4)
    # CJK characters take 3 bytes in UTF-8, ASCII 1: counting bytes (in C) finds
    # them without a Python-level pass over the text.
    wide = min(length, (len(text.encode("utf-8", "surrogatepass")) - length) // 2)
    return wide + (length - wide + 3) // 4


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Estimated prompt tokens of a chat, completion, embedding or responses body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        total = 3  # every reply is primed with <|start|>assistant
        for message in messages:
            if not isinstance(message, dict):
                continue
            total += MESSAGE_OVERHEAD + estimate_text_tokens(content_text(message.get("content")))
            content = message.get("content")
            if isinstance(content, list):
                total += IMAGE_TOKENS * sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):  # any other shape is the upstream's to judge
                    total += estimate_text_tokens(str(fn.get("name", "")))
                    total += estimate_text_tokens(str(fn.get("arguments", "")))
        tools = body.get("tools")
        if isinstance(tools, list):
            total += sum(estimate_text_tokens(str(t)) for t in tools)
        return total
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, str):
        return estimate_text_tokens(prompt)
    if isinstance(prompt, list):
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += estimate_text_tokens(item)
            elif isinstance(item, int):
                total += 1
            elif isinstance(item, list):
                total += len(item)
            elif isinstance(item, dict):
                total += MESSAGE_OVERHEAD + estimate_text_tokens(content_text(item.get("content")))
        return total
    return 0


#: Request fields that cap the output, across chat, completions and Responses.
MAX_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def output_limit(body: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> int | None:
    """The most output tokens a request may produce: the smallest cap it (or a target's
    overrides) sets, or ``None`` when it sets none."""
    over = overrides or {}
    caps = [v for k in MAX_OUTPUT_KEYS
            if isinstance(v := over.get(k, body.get(k)), int) and not isinstance(v, bool) and v >= 0]
    return min(caps) if caps else None


def request_token_bounds(body: Mapping[str, Any], endpoint: str, overrides: Mapping[str, Any] | None,
                         default_max_output: int, prompt: int | None = None) -> tuple[int, int]:
    """(estimated prompt tokens, most output tokens) of a request: what admission reserves.

    The rate limiter's token buckets and the budget check reserve the same
    bounds, settled to the real usage when the request ends. Embeddings have no output.
    """
    if prompt is None:
        prompt = estimate_prompt_tokens(body)  # type: ignore[arg-type]
    if endpoint == "embeddings":
        return prompt, 0
    limit = output_limit(body, overrides)
    return prompt, default_max_output if limit is None else limit
