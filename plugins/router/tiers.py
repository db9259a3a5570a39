"""The router's configuration compiled for the hot path, and its cross-checks.

:func:`check` finds what the settings' own validation cannot see (unknown routes
and models, names that clash with the catalogue or aliases); :func:`compile_tier`
and :func:`compile_rule` turn valid settings into the frozen :class:`Tier` and
:class:`Rule` that ``RouterPlugin.classify`` and ``proxy_route`` use.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import proxy

from .body import FEATURE_BITS, keyword_pattern
from .settings import RouterSettings, RouteSettings, RuleSettings

__all__ = ["FEATURES", "KEYWORDS", "MAX_FIELDS", "MAX_TOKENS", "MIN_TOKENS", "MIN_TURNS", "RULE_DEFAULT",
           "RULE_HEADER_FORCED", "RULE_REQUESTED", "Decision", "Rule", "Tier", "check", "compile_rule", "compile_tier"]

#: Rule names of decisions no configured rule made.
RULE_DEFAULT = "default"  # no rule matched
RULE_REQUESTED = "requested"  # the client (or its alias) named the route
RULE_HEADER_FORCED = "header"  # x-floodgate-tier
_RESERVED_RULES = (RULE_DEFAULT, RULE_REQUESTED, RULE_HEADER_FORCED)

#: Endpoints a route can serve, and the output-length fields each uses (the first
#: is the one a default sets). Never translate one field into another.
MAX_FIELDS: dict[str, tuple[str, ...]] = {
    "chat/completions": ("max_tokens", "max_completion_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
# Route and rule names travel in response headers and metric labels.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_NAME_RULE = "ASCII letters, digits and . _ : - (it is sent in a response header)"

# Matcher kinds, as small ints for a cheap dispatch in classify().
KEYWORDS, MIN_TOKENS, MAX_TOKENS, MIN_TURNS, FEATURES = range(5)
_KIND_OF = {"keywords": KEYWORDS, "min_prompt_tokens": MIN_TOKENS, "max_prompt_tokens": MAX_TOKENS,
            "min_turns": MIN_TURNS, "features": FEATURES}


@dataclass(frozen=True, slots=True)
class Decision:
    """The router's choice for one request.

    :param route: the tier's name.
    :param rule: the matched rule's name, or ``"default"`` (no rule matched),
        ``"requested"`` (the client named the route) or ``"header"`` (forced).
    :param prompt_tokens: the estimated prompt tokens, when a rule needed them.
    """

    route: str
    rule: str
    prompt_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    route: str
    kind: int
    value: Any  # a compiled regex, a token/turn count or a feature bit mask
    describe: str  # for the CLI


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    targets: tuple[proxy.Target, ...]
    params: Mapping[str, Any]
    default_tokens: int | None
    cap: int | None
    system_prompt: str | None
    system_message: Mapping[str, Any] | None

    def overrides(self, body: Mapping[str, Any], endpoint: str) -> dict[str, Any]:
        """The request fields to change for this tier (empty: forward the body as it is)."""
        out = dict(self.params) if self.params else {}
        if self.default_tokens is not None or self.cap is not None:
            fields = MAX_FIELDS[endpoint]
            given = False
            for key in fields:
                value = body.get(key)
                if value is None:
                    continue
                given = True
                if (self.cap is not None and isinstance(value, int) and not isinstance(value, bool)
                        and value > self.cap):
                    out[key] = self.cap
            if not given and self.default_tokens is not None:
                out[fields[0]] = self.default_tokens
        if self.system_prompt is not None:
            if endpoint == "chat/completions":
                messages = body.get("messages")
                out["messages"] = [self.system_message, *(messages if isinstance(messages, list) else ())]
            elif endpoint == "responses":
                given_instructions = body.get("instructions")
                out["instructions"] = (f"{self.system_prompt}\n\n{given_instructions}"
                                       if isinstance(given_instructions, str) and given_instructions
                                       else self.system_prompt)
            # legacy completions have no place for a system prompt: left out
        return out


def check(config: proxy.Config, settings: RouterSettings) -> list[proxy.ConfigError]:
    """Cross-checks against the catalogue and between routes and rules."""
    base = ("plugins", "router")
    errors: list[proxy.ConfigError] = []
    routes = settings.routes
    known = ", ".join(routes) or "none"

    def unknown_route(path: tuple[Any, ...], name: str) -> None:
        close = difflib.get_close_matches(name, list(routes), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known routes: {known})"
        errors.append(config.error((*base, *path), f"unknown route {name!r}{hint}"))

    def check_model(path: tuple[Any, ...], model: str) -> None:
        if any(c in model for c in "*?["):
            errors.append(config.error((*base, *path), f"{model!r} is a pattern: name a concrete model "
                                       "(a pattern serves it)"))
            return
        entry = config.entry(model)  # an exact entry, or the catalogue pattern serving this name
        if entry is None:
            close = difflib.get_close_matches(model, list(config.models), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (not in the models catalogue)"
            errors.append(config.error((*base, *path), f"unknown model {model!r}{hint}"))
        elif entry.kind == "embedding":
            errors.append(config.error((*base, *path), f"{model!r} is an embedding model"))

    for name, route in routes.items():
        if not _NAME_RE.match(name):
            errors.append(config.error((*base, "routes", name), f"route names must be {_NAME_RULE}; give a "
                                       f"client-facing name with an alias (aliases: {{{name}: <route>}})"))
        elif name in config.models:
            errors.append(config.error((*base, "routes", name),
                                       "a route cannot have the name of a catalogue model"))
        if name == settings.selector:
            errors.append(config.error((*base, "routes", name), f"{name!r} is the selector's name"))
        check_model(("routes", name, "model"), route.model)
        for i, fallback in enumerate(route.fallbacks or ()):
            check_model(("routes", name, "fallbacks", i), fallback)
    if routes:
        if settings.default is None:
            errors.append(config.error((*base, "default"), "required key is missing (the route used when no "
                                       "rule matches)"))
        elif settings.default not in routes:
            unknown_route(("default",), settings.default)
        if settings.selector in config.models:
            errors.append(config.error((*base, "selector"),
                                       "the selector cannot have the name of a catalogue model"))
        elif not _NAME_RE.match(settings.selector):
            errors.append(config.error((*base, "selector"), f"must be {_NAME_RULE}"))
        for alias in config.aliases:
            if alias in routes or alias == settings.selector:
                errors.append(config.error(("aliases", alias), "is also a route name of plugins.router"))
    seen: dict[str, int] = {}
    for i, rule in enumerate(settings.rules):
        if rule.route not in routes:
            unknown_route(("rules", i, "route"), rule.route)
        if rule.name is not None:
            if not _NAME_RE.match(rule.name) or rule.name in _RESERVED_RULES:
                errors.append(config.error((*base, "rules", i, "name"), f"must be {_NAME_RULE}, and not "
                                           f"one of {', '.join(_RESERVED_RULES)}"))
            elif rule.name in seen:
                errors.append(config.error((*base, "rules", i, "name"),
                                           f"{rule.name!r} is already the name of rules.{seen[rule.name]}"))
            else:
                seen[rule.name] = i
    return errors


def compile_tier(config: proxy.Config, name: str, route: RouteSettings) -> Tier:
    entry = config.entry(route.model)
    assert entry is not None  # check() refused unknown models
    fallbacks = route.fallbacks if route.fallbacks is not None else entry.fallbacks
    chain = [route.model, *(m for m in dict.fromkeys(fallbacks) if m != route.model)]
    return Tier(
        name=name,
        targets=tuple(t for m in chain for t in config.deployments(m)),  # each model's deployments, in turn
        params=dict(route.params),
        default_tokens=route.max_tokens.default,
        cap=route.max_tokens.cap,
        system_prompt=route.system_prompt,
        system_message={"role": "system", "content": route.system_prompt} if route.system_prompt else None,
    )


def compile_rule(index: int, rule: RuleSettings) -> Rule:
    matcher = rule.matcher
    value: Any = getattr(rule, matcher)
    if matcher == "keywords":
        describe = "keywords: " + ", ".join(value)
        if len(describe) > 60:
            describe = describe[:59] + "…"
        value = keyword_pattern(value)
    elif matcher == "features":
        describe = "features: " + ", ".join(value)
        mask = 0
        for feature in value:
            mask |= FEATURE_BITS[feature]
        value = mask
    else:
        describe = f"{matcher.replace('_', ' ')}: {value}"
    return Rule(rule.name or f"rules.{index}", rule.route, _KIND_OF[matcher], value, describe)
