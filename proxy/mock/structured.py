"""How the mock answers structured requests, like a real model would.

- ``tools`` with ``tool_choice`` ``auto`` (the default), ``required``, a named function or
  ``allowed_tools``: a call to one of the (allowed) function tools, its arguments valid
  against that tool's ``parameters`` schema; ``none``, or ``auto`` right after a tool
  result: a text answer. A ``tool_choice`` naming no given tool is a 400, as OpenAI says.
- ``response_format`` ``json_schema`` (chat) or ``text.format`` ``json_schema``
  (Responses): JSON valid against the schema. ``json_object``: a JSON object, following a
  JSON schema the messages carry (as a prompt for JSON mode does), else ``{"answer": ...}``.

Choices come from a generator seeded with the request's ``seed`` and conversation: the same
request gets the same answer, streamed or not; another ``seed``, another answer. The first
free-text argument of a tool call says what the user last asked (a search tool searches it).
"""

from __future__ import annotations

import json
import random
from typing import Any

import orjson

from .faults import _error
from .schemas import SchemaValues

_PIECE_CHARS = 4  # structured answers stream in pieces of this many characters (one "token" each)
_MAX_SCAN = 32  # JSON-mode schema search: at most this many '{' per message are tried


def rng_for(body: dict[str, Any]) -> random.Random:
    """The request's generator: from its ``seed`` and conversation, so that the same request
    (streamed or not) gets the same answer and another ``seed`` another one."""
    seed = body.get("seed")
    try:
        key = orjson.dumps([seed if isinstance(seed, int) else None, body.get("messages", body.get("input")),
                            body.get("tools"), body.get("response_format"), body.get("text")],
                           option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        key = repr(seed).encode()
    return random.Random(key)


def tool_call(body: dict[str, Any], rng: random.Random) -> tuple[str, str] | None:
    """``(function name, arguments JSON)`` when the answer is a tool call, else ``None``.

    Raises the mock's 400 for a ``tool_choice`` that names no given function.
    """
    tools = {name: fn for fn in _functions(body.get("tools")) if (name := fn.get("name"))}
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    allowed = list(tools)
    required = choice == "required"
    if isinstance(choice, dict):
        if choice.get("type") == "allowed_tools":
            spec = _dict(choice.get("allowed_tools"))
            allowed = [n for fn in _functions(spec.get("tools")) if (n := fn.get("name")) in tools]
            required = spec.get("mode") == "required"
        else:
            named = _dict(choice.get("function")) or choice
            allowed, required = [named.get("name")], True
        if not allowed or any(name not in tools for name in allowed):
            raise _error(400, f"Invalid value for 'tool_choice': {orjson.dumps(choice).decode()[:200]} names no "
                         "function in 'tools'.", param="tool_choice", code="invalid_value")
    elif choice not in (None, "auto", "required"):
        raise _error(400, "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a function.",
                     param="tool_choice", code="invalid_value")
    if not required and _after_tool_result(body):
        return None  # the model has its tool result: it answers
    name = rng.choice(sorted(allowed))
    parameters = tools[name].get("parameters")
    arguments = generate(parameters, rng, _last_user_text(body)[:40]) if isinstance(parameters, dict) else {}
    return name, orjson.dumps(arguments).decode()


def structured_text(body: dict[str, Any], rng: random.Random) -> str | None:
    """The JSON text a structured-output request gets, or ``None`` for a free-text answer."""
    fmt = body.get("response_format")
    if fmt is None:  # the Responses API: text.format
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = _dict(fmt.get("json_schema")) or fmt  # chat | Responses (flat)
        schema = spec.get("schema")
        return orjson.dumps(generate(schema, rng) if isinstance(schema, dict) else {}).decode()
    if kind == "json_object":
        schema = _schema_in_messages(body)
        value = generate(schema, rng) if schema is not None else None
        if not isinstance(value, dict):
            value = {"answer": SchemaValues({}, rng).value({"type": "string"})}
        return orjson.dumps(value).decode()
    return None


def generate(schema: dict[str, Any], rng: random.Random, hint: str = "") -> Any:
    try:
        return SchemaValues(schema, rng, hint).value(schema)
    except (ValueError, TypeError, RecursionError):  # a contradictory schema: the model does its best
        return {}


def pieces_of(text: str, body: dict[str, Any]) -> tuple[list[str], bool]:
    """A structured answer as stream pieces (one token each), cut at the request's token limit."""
    pieces = [text[i:i + _PIECE_CHARS] for i in range(0, len(text), _PIECE_CHARS)]
    limits = [v for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")
              if isinstance(v := body.get(k), int) and not isinstance(v, bool) and v >= 0]
    cap = min(limits, default=len(pieces))
    return (pieces[:cap], True) if cap < len(pieces) else (pieces, False)


def _functions(tools: Any) -> list[dict[str, Any]]:
    """The function definitions among ``tools`` (chat: nested under ``function``; Responses: flat)."""
    out = []
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type", "function") == "function":
            fn = _dict(tool.get("function")) or tool
            if isinstance(fn.get("name"), str):
                out.append(fn)
    return out


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages", body.get("input"))
    if isinstance(messages, str):
        return messages
    history: list[Any] = messages if isinstance(messages, list) else []
    for message in reversed(history):
        if isinstance(message, dict) and message.get("role") == "user":
            return _plain_text(message.get("content")).strip()
    return ""


def _after_tool_result(body: dict[str, Any]) -> bool:
    messages = body.get("messages", body.get("input"))
    last = messages[-1] if isinstance(messages, list) and messages else None
    return isinstance(last, dict) and (last.get("role") == "tool" or last.get("type") == "function_call_output")


def _schema_in_messages(body: dict[str, Any]) -> dict[str, Any] | None:
    """The first JSON schema written in a message (JSON mode: the prompt describes the JSON)."""
    messages = body.get("messages", body.get("input"))
    decoder = json.JSONDecoder()
    for message in messages if isinstance(messages, list) else ():
        text = _plain_text(message.get("content")) if isinstance(message, dict) else ""
        start = text.find("{")
        for _ in range(_MAX_SCAN):
            if start < 0:
                break
            try:
                found, _end = decoder.raw_decode(text, start)
            except ValueError:
                found = None
            if isinstance(found, dict) and ("properties" in found or found.get("type") == "object"):
                return found
            start = text.find("{", start + 1)
    return None


def _plain_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else ()
    return "\n".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
