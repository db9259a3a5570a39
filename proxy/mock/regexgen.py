"""A string that matches a regular expression (a JSON schema's ``pattern``), made by walking
Python's parse of the expression. Covers what schemas use: literals, classes, ``.``,
alternation, groups, repeats, anchors, backreferences; lookarounds are ignored (the
caller checks the result and falls back when it does not match).
"""

from __future__ import annotations

import random
import re
import string

# Python's own regular-expression parser (sre_parse, deprecated, is its alias).
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

_MAX_REPEAT = 4  # an open-ended repeat ({n,}, *, +) adds at most this many
_CATEGORIES = {
    "CATEGORY_DIGIT": string.digits, "CATEGORY_NOT_DIGIT": string.ascii_letters,
    "CATEGORY_SPACE": " ", "CATEGORY_NOT_SPACE": string.ascii_letters + string.digits,
    "CATEGORY_WORD": string.ascii_letters + string.digits + "_", "CATEGORY_NOT_WORD": "-. ",
}
_PRINTABLE = string.ascii_letters + string.digits + "-_."


def string_matching(pattern: str, rng: random.Random) -> str | None:
    """A string ``re.search(pattern, s)`` accepts, or ``None`` when none was found."""
    try:
        parsed = sre_parse.parse(pattern)
        compiled = re.compile(pattern)
    except (re.error, RecursionError):
        return None
    for _ in range(8):
        groups: dict[int, str] = {}
        try:
            text = _walk(parsed, rng, groups)
        except (ValueError, IndexError, RecursionError):
            continue
        if compiled.search(text):
            return text
    return None


def _walk(items: Any, rng: random.Random, groups: dict[int, str]) -> str:
    return "".join(_item(op, arg, rng, groups) for op, arg in items)


def _item(op: Any, arg: Any, rng: random.Random, groups: dict[int, str]) -> str:
    name = str(op)
    if name == "LITERAL":
        return chr(arg)
    if name == "NOT_LITERAL":
        return rng.choice([c for c in _PRINTABLE if ord(c) != arg])
    if name == "ANY":
        return rng.choice(string.ascii_letters)
    if name == "IN":
        return _in(arg, rng)
    if name == "BRANCH":
        return _walk(rng.choice(arg[1]), rng, groups)
    if name == "SUBPATTERN":
        group, _add, _del, sub = arg
        text = _walk(sub, rng, groups)
        if group is not None:
            groups[group] = text
        return text
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        low, high, sub = arg
        high = low + _MAX_REPEAT if high is sre_constants.MAXREPEAT else min(high, low + _MAX_REPEAT)
        return "".join(_walk(sub, rng, groups) for _ in range(rng.randint(low, high)))
    if name == "GROUPREF":
        return groups.get(arg, "")
    if name == "CATEGORY":
        return rng.choice(_CATEGORIES.get(str(arg), "x"))
    return ""  # AT (anchors), ASSERT, ASSERT_NOT, ATOMIC_GROUP...: nothing to emit


def _in(items: list[tuple[Any, Any]], rng: random.Random) -> str:
    negate = bool(items) and str(items[0][0]) == "NEGATE"
    chars: list[str] = []
    for op, arg in items[1:] if negate else items:
        kind = str(op)
        if kind == "LITERAL":
            chars.append(chr(arg))
        elif kind == "RANGE":
            low, high = arg
            chars.extend(chr(c) for c in range(low, min(high, low + 256) + 1))
        elif kind == "CATEGORY":
            chars.extend(_CATEGORIES.get(str(arg), ""))
    if negate:
        excluded = set(chars)
        chars = [c for c in _PRINTABLE if c not in excluded]
    if not chars:
        raise ValueError("empty class")
    return rng.choice(chars)
