"""The mock's deterministic token counting (see :mod:`proxy.mock` for the rule).

Every ``prompt_tokens``/``input_tokens`` figure the mock reports comes from here, so
tests can compute the exact usage they expect with :func:`count_tokens`.
"""

from __future__ import annotations

import re
from typing import Any

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def count_tokens(text: str) -> int:
    """Deterministic token count: CJK characters + runs of other non-space characters."""
    return len(_TOKEN_RE.findall(text))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Like a real API, text of another type is not text: counted as nothing, never a crash.
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _messages_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(4 + count_tokens(_text_of(m.get("content"))) for m in messages
               if isinstance(m, dict))


def _input_tokens(value: Any) -> list[int]:
    """Per-input token counts for legacy prompts and embedding inputs."""
    if isinstance(value, str):
        return [count_tokens(value)]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [len(value)]
    if isinstance(value, list):
        return [count_tokens(v) if isinstance(v, str) else len(v) if isinstance(v, list) else 0
                for v in value]
    return [0]
