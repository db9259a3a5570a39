"""Catalogue patterns: a catalogue name with ``*``, ``?`` or ``[...]`` is a glob that sends
every model name it matches to its entry.

Globs use ``fnmatch``'s syntax, case-sensitive (as model names are). Exact names win over
patterns; among patterns the longer one wins, then the one listed first. A pattern's
``upstream_model`` may be a template: ``{name}`` is the requested name, ``{1}``, ``{2}``, ...
the text each ``*`` matched (``"openai/*": {upstream_model: "{1}"}`` sends ``openai/gpt-5``
upstream as ``gpt-5``); without one the requested name is sent as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

GLOB_CHARS = frozenset("*?[")
_PLACEHOLDER = re.compile(r"\{(name|[0-9]+)\}")


def is_pattern(name: str) -> bool:
    """Whether a catalogue name is a glob (it contains ``*``, ``?`` or ``[``)."""
    return any(c in GLOB_CHARS for c in name)


def _tokens(glob: str) -> list[str]:
    """The glob split into ``*``, ``?``, ``[class]`` and single literal characters
    (runs of ``*`` collapsed; a ``[`` without its ``]`` is a literal, as in ``fnmatch``)."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "[":
            j = i + 1
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j < n:
                out.append(glob[i:j + 1])
                i = j + 1
                continue
        if not (c == "*" and out and out[-1] == "*"):
            out.append(c)
        i += 1
    return out


def _token_regex(token: str) -> str:
    if token == "*":
        return "(.*)"
    if token == "?":
        return "."
    if len(token) > 1:  # a [class]
        body = token[1:-1].replace("\\", "\\\\")
        if body.startswith("!"):
            body = "^" + body[1:]
        elif body.startswith("^"):
            body = "\\" + body
        return f"[{body}]"
    return re.escape(token)


def syntax_error(glob: str) -> str | None:
    """Why ``glob`` is not a usable pattern, or ``None``."""
    try:
        re.compile("".join(_token_regex(t) for t in _tokens(glob)))
    except re.error as exc:
        return f"invalid pattern: {exc}"
    return None


@dataclass(frozen=True, slots=True)
class Pattern:
    """One catalogue pattern, compiled.

    :param text: the catalogue name (``"gpt-*"``).
    :param index: its position in the catalogue (ties between equally long patterns).
    :param stars: how many ``*`` groups it has (the template's ``{1}``.. ``{stars}``).
    """

    text: str
    index: int
    stars: int
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, text: str, index: int) -> Pattern:
        tokens = _tokens(text)
        regex = re.compile("".join(_token_regex(t) for t in tokens), re.DOTALL)
        return cls(text, index, tokens.count("*"), regex)

    @property
    def precedence(self) -> tuple[int, int]:
        """Sort key: longer first, then earlier in the catalogue."""
        return (-len(self.text), self.index)

    def match(self, name: str) -> re.Match[str] | None:
        return self.regex.fullmatch(name)

    def matches_everything(self) -> bool:
        return set(self.text) == {"*"}

    def upstream_model(self, template: str | None, name: str, match: re.Match[str]) -> str:
        """The model id sent upstream for ``name`` (matched by this pattern)."""
        if template is None:
            return name
        return _PLACEHOLDER.sub(lambda m: name if m[1] == "name" else match[int(m[1])], template)

    def client_name(self, template: str | None, upstream_id: str) -> str | None:
        """The client-facing name that this pattern sends upstream as ``upstream_id``, when
        that can be told: no template (the same name), or ``{1}`` on a pattern whose only
        wildcard is one ``*`` (``"openai/*"`` lists ``gpt-5`` as ``openai/gpt-5``)."""
        if template is None or template == "{name}":
            name = upstream_id
        elif template == "{1}" and self.text.count("*") == 1 and not set(self.text) & {"?", "["}:
            name = self.text.replace("*", upstream_id, 1)
        else:
            return None
        return name if self.match(name) else None


def template_error(template: str, stars: int | None) -> str | None:
    """Why ``template`` is not a valid ``upstream_model`` (``stars`` is ``None`` for an exact entry)."""
    placeholders = _PLACEHOLDER.findall(template)
    if stars is None:
        return ("placeholders ({name}, {1}, ...) are for pattern entries; an exact entry's upstream_model "
                "is the id itself") if placeholders else None
    for placeholder in placeholders:
        if placeholder != "name" and not 1 <= int(placeholder) <= stars:
            return (f"{{{placeholder}}} has no '*' to take its text from (this pattern has {stars}; "
                    "use {name} for the whole requested name)")
    return None


def covers(wider: str, narrower: str) -> bool:
    """Whether glob ``wider`` matches every name glob ``narrower`` matches (conservative: a
    ``False`` may be a miss for exotic classes, a ``True`` is always right)."""
    q, p = _tokens(wider), _tokens(narrower)

    @cache
    def go(i: int, j: int) -> bool:
        if i == len(q):
            return j == len(p)
        token = q[i]
        if token == "*":
            return go(i + 1, j) or (j < len(p) and go(i, j + 1))
        if j == len(p) or p[j] == "*":
            return False
        other = p[j]
        if token == "?":
            ok = True  # any single-character token of the narrower glob
        elif len(token) > 1:  # a class covers an identical class, or a literal it matches
            ok = other == token or (len(other) == 1 and other != "?"
                                    and re.fullmatch(_token_regex(token), other) is not None)
        else:
            ok = other == token
        return ok and go(i + 1, j + 1)

    return go(0, 0)


def ordered(patterns: list[Pattern]) -> tuple[Pattern, ...]:
    """Patterns in the order they are tried (see the module docstring)."""
    return tuple(sorted(patterns, key=lambda p: p.precedence))


def shadowing(patterns: tuple[Pattern, ...]) -> dict[str, str]:
    """Patterns that can never win → the pattern (tried before them) that takes all their names."""
    out: dict[str, str] = {}
    for k, pattern in enumerate(patterns):
        for earlier in patterns[:k]:
            if covers(earlier.text, pattern.text):
                out[pattern.text] = earlier.text
                break
    return out
