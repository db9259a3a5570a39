"""What the user said: one answer for every plugin (the FAQ, the router, yours).

Bodies are untrusted: any JSON value may sit anywhere. These functions read only
what has the expected shape and ignore the rest, never raising.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Content-part types that carry text (chat and Responses).
TEXT_PARTS = frozenset({"text", "input_text"})


def content_text(content: Any) -> str:
    """The text of a message ``content``: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(text for part in content
                       if isinstance(part, dict) and part.get("type") in TEXT_PARTS
                       and isinstance(text := part.get("text"), str))
    return ""


def conversation(body: Mapping[str, Any]) -> list[Any] | None:
    """The conversation items of a chat (``messages``) or Responses (``input`` list) body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return messages
    given = body.get("input")
    return given if isinstance(given, list) else None


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message; for prompt-style bodies, the prompt (or the
    last string of a prompt list) or a Responses ``input`` string."""
    items = conversation(body)
    if items is not None:
        for item in reversed(items):
            if isinstance(item, dict) and item.get("role") == "user":
                return content_text(item.get("content"))
        return ""
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], str):
        return prompt[-1]
    return ""
