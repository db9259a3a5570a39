"""The complexity router: send each request to a model tier.

Clients ask for a route instead of a model: the selector (``auto`` by default)
classifies the request with ordered rules (keywords of the last user message,
prompt length, number of turns, request features) and picks a tier; a route
name (``simple``, ``complex``, an agent persona ...) picks that tier directly.
Existing clients reach a route through the core's ``aliases``
(``gpt-4o-mini: auto``). An explicit catalogue model is left to the core.

A tier is its model, ordered fallbacks, ``max_tokens`` default and cap, an
optional system prompt and parameter overrides; they become the route's
targets' ``overrides``, so fallbacks get the same treatment::

    plugins:
      router:
        selector: auto
        default: simple
        routes:
          simple:  {model: deepseek-v3.2, fallbacks: [gemini-2.5-flash],
                    max_tokens: {default: 512, cap: 1024}}
          complex: {model: gpt-4.1, fallbacks: [gemini-2.5-flash]}
        rules:
          - {name: reasoning, route: complex, keywords: [为什么, 分析, why]}
          - {name: long, route: complex, min_prompt_tokens: 2000}

A key whose principal has ``settings["force_tier"]`` may choose a tier with the
``x-floodgate-tier`` request header (it wins over the requested model, even an
explicit catalogue model); anyone else sending it gets 403
``tier_forcing_not_allowed`` (never silently ignored), an unknown tier 400.

Route and rule names are ASCII tokens because they travel in response headers
(``x-floodgate-route``, ``x-floodgate-route-rule``) and metric labels; give a
tier a Chinese client-facing name with an alias (``订单查询: order``).

``floodgate route "这款手机和那款有什么区别?"`` shows the decision for a message.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from prometheus_client import CollectorRegistry, Counter
from pydantic import Field, field_validator, model_validator

import proxy

__all__ = ["Decision", "RouterPlugin", "RouterSettings", "floodgate_plugin"]

TIER_HEADER = "x-floodgate-tier"
RULE_HEADER = "x-floodgate-route-rule"

#: Rule names of decisions no configured rule made.
RULE_DEFAULT = "default"  # no rule matched
RULE_REQUESTED = "requested"  # the client (or its alias) named the route
RULE_HEADER_FORCED = "header"  # x-floodgate-tier
_RESERVED_RULES = (RULE_DEFAULT, RULE_REQUESTED, RULE_HEADER_FORCED)

# Endpoints a route can serve, and the output-length fields each uses (the first
# is the one a default sets). Never translate one field into another.
_MAX_FIELDS: dict[str, tuple[str, ...]] = {
    "chat/completions": ("max_tokens", "max_completion_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
# Route and rule names travel in response headers and metric labels.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_NAME_RULE = "ASCII letters, digits and . _ : - (it is sent in a response header)"
_FORBIDDEN_PARAMS = {
    "model": "the route's models decide it",
    "messages": "use system_prompt",
    "prompt": "it is the client's input",
    "input": "it is the client's input",
    "instructions": "use system_prompt",
    "stream": "the client decides it",
    "stream_options": "the gateway manages it",
    "max_tokens": "use max_tokens.default / max_tokens.cap",
    "max_completion_tokens": "use max_tokens.default / max_tokens.cap",
    "max_output_tokens": "use max_tokens.default / max_tokens.cap",
}

Feature = Literal["tools", "response_format", "images"]
_FEATURE_BITS = {"tools": 1, "response_format": 2, "images": 4}
_IMAGE_PARTS = ("image_url", "input_image")  # chat, Responses
_MATCHERS = ("keywords", "min_prompt_tokens", "max_prompt_tokens", "min_turns", "features")
Keyword = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


# --- settings ----------------------------------------------------------------

class MaxTokensSettings(proxy.Settings):
    """Output length of a tier, applied to whichever field the client used."""

    default: PositiveInt | None = None  # set when the client gave no limit
    cap: PositiveInt | None = None  # upper bound of the client's own limit

    @model_validator(mode="after")
    def _default_within_cap(self) -> MaxTokensSettings:
        if self.default is not None and self.cap is not None and self.default > self.cap:
            raise ValueError(f"default ({self.default}) is larger than cap ({self.cap})")
        return self


class RouteSettings(proxy.Settings):
    """One tier."""

    model: str
    fallbacks: list[str] | None = None  # None: the catalogue fallbacks of ``model``
    max_tokens: MaxTokensSettings = MaxTokensSettings()
    system_prompt: str | None = Field(None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _allowed_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        for key in params:
            if key in _FORBIDDEN_PARAMS:
                raise ValueError(f"{key!r} cannot be overridden ({_FORBIDDEN_PARAMS[key]})")
        return params


class RuleSettings(proxy.Settings):
    """One classification rule: a target route and exactly one matcher."""

    route: str
    name: str | None = None  # default: rules.<index>
    keywords: list[Keyword] | None = Field(None, min_length=1)
    min_prompt_tokens: NonNegativeInt | None = None
    max_prompt_tokens: NonNegativeInt | None = None
    min_turns: PositiveInt | None = None
    features: list[Feature] | None = Field(None, min_length=1)

    @field_validator("keywords")
    @classmethod
    def _no_blank_keyword(cls, keywords: list[str] | None) -> list[str] | None:
        if keywords and any(not k.strip() for k in keywords):
            raise ValueError("keywords must not be blank")
        return keywords

    @model_validator(mode="after")
    def _one_matcher(self) -> RuleSettings:
        given = [m for m in _MATCHERS if getattr(self, m) is not None]
        if len(given) != 1:
            found = f" (found {', '.join(given)})" if given else ""
            raise ValueError(f"a rule needs exactly one matcher of {', '.join(_MATCHERS)}{found}")
        return self

    @property
    def matcher(self) -> str:
        return next(m for m in _MATCHERS if getattr(self, m) is not None)


class RouterSettings(proxy.Settings):
    """``plugins.router``."""

    selector: str = "auto"  # the route name that classifies
    default: str | None = None  # the route when no rule matches (required with routes)
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    rules: list[RuleSettings] = Field(default_factory=list)


# --- compiled form -----------------------------------------------------------

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


# Matcher kinds, as small ints for a cheap dispatch in classify().
_KEYWORDS, _MIN_TOKENS, _MAX_TOKENS, _MIN_TURNS, _FEATURES = range(5)
_KIND_OF = {"keywords": _KEYWORDS, "min_prompt_tokens": _MIN_TOKENS, "max_prompt_tokens": _MAX_TOKENS,
            "min_turns": _MIN_TURNS, "features": _FEATURES}


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    route: str
    kind: int
    value: Any  # a compiled regex, a token/turn count or a feature bit mask
    describe: str  # for the CLI


@dataclass(frozen=True, slots=True)
class _Tier:
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
            fields = _MAX_FIELDS[endpoint]
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


# --- request inspection (pure functions of the body) -------------------------

def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type") in ("text", "input_text")
                       and isinstance(p.get("text"), str))
    return ""


def _items(body: Mapping[str, Any]) -> list[Any] | None:
    """The conversation items of a chat (``messages``) or Responses (``input``) body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return messages
    given = body.get("input")
    return given if isinstance(given, list) else None


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message, or the prompt/input string."""
    items = _items(body)
    if items is not None:
        for item in reversed(items):
            if isinstance(item, dict) and item.get("role") == "user":
                return _text(item.get("content"))
        return ""
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], str):
        return prompt[-1]
    return ""


def user_turns(body: Mapping[str, Any]) -> int:
    items = _items(body)
    if items is None:
        return 1 if body.get("prompt", body.get("input")) else 0
    return sum(1 for item in items if isinstance(item, dict) and item.get("role") == "user")


def features(body: Mapping[str, Any]) -> int:
    """The request's features as a bit mask of ``_FEATURE_BITS``."""
    found = 0
    if body.get("tools") or body.get("functions"):
        found |= 1
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object"):
        found |= 2
    for item in _items(body) or ():
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in _IMAGE_PARTS
                                             for p in content):
            found |= 4
            break
    return found


def _keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str]:
    """One alternation per rule, of lower-cased keywords: classify() lower-cases the
    text once instead of every pattern paying for ``re.IGNORECASE`` (4x slower)."""
    alternatives = sorted({k.lower() for k in keywords}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, alternatives)))


def _prompt_tokens_bound(body: Mapping[str, Any]) -> int | None:
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


# --- the plugin --------------------------------------------------------------

class RouterPlugin:
    """Routes ``auto`` (and aliases of it) to a tier chosen by rules; route names directly."""

    name = "router"

    def __init__(self) -> None:
        self.settings = RouterSettings()
        self.selector = "auto"
        self.default = ""
        self.tiers: dict[str, _Tier] = {}
        self.rules: tuple[_Rule, ...] = ()
        # client-facing model name -> route name or the selector
        self._entries: dict[str, str] = {}
        self._decisions: proxy.LabelCache | None = None

    # -- configuration --------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        self.settings = settings = config.plugin_settings(self.name, RouterSettings)
        self.selector = settings.selector
        self.default = settings.default or ""
        errors = _check(config, settings)
        if errors:
            raise proxy.ConfigErrors(errors)
        self.tiers = {name: _compile_tier(config, name, route) for name, route in settings.routes.items()}
        self.rules = tuple(_compile_rule(i, rule) for i, rule in enumerate(settings.rules))
        entries = {name: name for name in self.tiers}
        if self.tiers:
            entries[self.selector] = self.selector
            for alias, target in config.aliases.items():
                if target in entries:
                    entries[alias] = entries[target]
        self._entries = entries
        self._decisions = proxy.LabelCache(Counter(
            "floodgate_router_decisions", "Routing decisions by route and matched rule",
            ["route", "rule"], registry=registry))

    @proxy.hookimpl
    def proxy_route_names(self, config: proxy.Config) -> list[str]:
        return [*self.tiers, self.selector] if self.tiers else []

    # -- classification (pure: used by the hook and the CLI) -------------------
    def classify(self, body: Mapping[str, Any]) -> Decision:
        """The tier the selector picks for a request body: first matching rule, else the default.

        Each input (text, token estimate, turns, features) is computed only when
        a rule needs it, at most once.
        """
        text: str | None = None
        tokens: int | None = None
        bound = -1
        turns = -1
        found = -1
        for rule in self.rules:
            kind = rule.kind
            if kind == _KEYWORDS:
                if text is None:
                    text = last_user_text(body).lower()
                hit = rule.value.search(text) is not None
            elif kind == _MIN_TOKENS:
                if tokens is None:
                    if bound == -1:
                        bound = _prompt_tokens_bound(body) or 0  # 0: unknown
                    if 0 < bound < rule.value:
                        continue  # certainly shorter: no estimate needed
                    tokens = proxy.estimate_prompt_tokens(body)  # type: ignore[arg-type]
                hit = tokens >= rule.value
            elif kind == _MAX_TOKENS:
                if tokens is None:
                    tokens = proxy.estimate_prompt_tokens(body)  # type: ignore[arg-type]
                hit = tokens <= rule.value
            elif kind == _MIN_TURNS:
                if turns < 0:
                    turns = user_turns(body)
                hit = turns >= rule.value
            else:
                if found < 0:
                    found = features(body)
                hit = bool(found & rule.value)
            if hit:
                return Decision(rule.route, rule.name, tokens)
        return Decision(self.default, RULE_DEFAULT, tokens)

    def decide(self, model: str | None, body: Mapping[str, Any]) -> Decision | None:
        """The decision for a client asking for ``model``; ``None`` when the router does not handle it."""
        entry = self._entries.get(model) if model is not None else None
        if entry is None:
            return None
        if entry == self.selector:
            return self.classify(body)
        return Decision(entry, RULE_REQUESTED)

    # -- per request ----------------------------------------------------------
    @proxy.hookimpl
    def proxy_route(self, ctx: proxy.RequestContext) -> proxy.Route | None:
        endpoint = ctx.endpoint
        if endpoint not in _MAX_FIELDS:
            return None
        forced = ctx.headers.get(TIER_HEADER)
        if forced is not None:
            decision = Decision(self._forced_tier(ctx, forced), RULE_HEADER_FORCED)
        else:
            decision = self.decide(ctx.model, ctx.body)
            if decision is None:
                return None  # an explicit catalogue model (or unknown): the core decides
        tier = self.tiers[decision.route]
        overrides = tier.overrides(ctx.body, endpoint)
        targets = tuple(t.with_overrides(**overrides) for t in tier.targets) if overrides else tier.targets
        ctx.state["router.rule"] = decision.rule
        ctx.state["router.decision"] = decision
        ctx.response_headers[RULE_HEADER] = decision.rule
        return proxy.Route(name=decision.route, targets=targets)

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        # Counted here, not in proxy_route: other plugins may ask the route hooks
        # what a request *would* get (the FAQ plugin prices its savings that way).
        decision = ctx.state.get("router.decision")
        if decision is not None and self._decisions is not None:
            self._decisions(decision.route, decision.rule).inc()

    def _forced_tier(self, ctx: proxy.RequestContext, tier: str) -> str:
        # Refused rather than ignored: a client that asks to force a tier must
        # learn that it did not happen. Only keys granted force_tier may.
        if not ctx.principal.settings.get("force_tier"):
            raise proxy.Rejection(403, f"this key may not choose a tier with the {TIER_HEADER} header",
                                  code="tier_forcing_not_allowed", param=TIER_HEADER, should_retry=False)
        tier = tier.strip()
        if tier not in self.tiers:
            known = ", ".join(self.tiers) or "none configured"
            raise proxy.Rejection(400, f"unknown tier {tier[:64]!r} in the {TIER_HEADER} header "
                                  f"(known: {known})", code="unknown_tier", param=TIER_HEADER,
                                  should_retry=False)
        return tier

    # -- command line -----------------------------------------------------------
    @proxy.hookimpl
    def proxy_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        from proxy.cli import add_config_option

        parser = subparsers.add_parser(
            "route", help="show which tier the router picks for a message",
            description="Classify MESSAGE as a single user message, as the router would for a request to "
                        "the selector (or to --model), and print the tier, the matched rule, the model "
                        "chain and the token estimate.")
        add_config_option(parser)
        parser.add_argument("--model", help="the model name the client sends (default: the selector)")
        parser.add_argument("message", nargs="+", help="the user message (several words are joined)")
        parser.set_defaults(func=route_command)

    def explain(self, decision: Decision) -> dict[str, str]:
        """Human-readable lines describing a decision (for the CLI)."""
        tier = self.tiers[decision.route]
        rule = next((r for r in self.rules if r.name == decision.rule), None)
        if rule is not None:
            why = f"{rule.name} ({rule.describe})"
        elif decision.rule == RULE_DEFAULT:
            why = f"{RULE_DEFAULT} (no rule matched; default route {self.default!r})"
        elif decision.rule == RULE_HEADER_FORCED:
            why = f"{decision.rule} (forced with the {TIER_HEADER} header)"
        else:
            why = f"{decision.rule} (the client named the route)"
        limits = [f"default {tier.default_tokens}" if tier.default_tokens else "",
                  f"cap {tier.cap}" if tier.cap else ""]
        lines = {
            "route": decision.route,
            "rule": why,
            "models": " → ".join(t.model for t in tier.targets),
            "max_tokens": ", ".join(x for x in limits if x) or "client's own",
        }
        if tier.system_prompt:
            prompt = " ".join(tier.system_prompt.split())
            lines["system"] = prompt if len(prompt) <= 60 else prompt[:59] + "…"
        if tier.params:
            lines["params"] = ", ".join(f"{k}={v!r}" for k, v in tier.params.items())
        return lines


def route_command(args: argparse.Namespace) -> int:
    """``floodgate route [--config PATH] [--model NAME] MESSAGE``."""
    router = RouterPlugin()
    try:
        config = proxy.load_config(args.config)
        router.proxy_configure(config, CollectorRegistry())
    except proxy.ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1
    if not router.tiers:
        print(f"{args.config}: no routes under plugins.router.routes", file=sys.stderr)
        return 1
    message = " ".join(args.message)
    model = args.model or router.selector
    body = {"model": model, "messages": [{"role": "user", "content": message}]}
    decision = router.decide(model, body)
    if decision is None:
        resolved = config.resolve(model)
        where = f"the catalogue model {resolved!r}" if resolved else "nothing (404 model_not_found)"
        print(f"{model!r} is not a route: the router leaves it alone; the core sends it to {where}")
        return 0
    tokens = decision.prompt_tokens
    if tokens is None:
        tokens = proxy.estimate_prompt_tokens(body)
    lines = {"message": message}
    if args.model:
        lines["model"] = args.model
    lines["prompt"] = f"~{tokens} tokens (estimated)"
    lines.update(router.explain(decision))
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    return 0


# --- configuration checks ------------------------------------------------------

def _check(config: proxy.Config, settings: RouterSettings) -> list[proxy.ConfigError]:
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
        entry = config.models.get(model)
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


def _compile_tier(config: proxy.Config, name: str, route: RouteSettings) -> _Tier:
    fallbacks = route.fallbacks if route.fallbacks is not None else config.models[route.model].fallbacks
    chain = [route.model, *(m for m in dict.fromkeys(fallbacks) if m != route.model)]
    return _Tier(
        name=name,
        targets=tuple(config.target(m) for m in chain),
        params=dict(route.params),
        default_tokens=route.max_tokens.default,
        cap=route.max_tokens.cap,
        system_prompt=route.system_prompt,
        system_message={"role": "system", "content": route.system_prompt} if route.system_prompt else None,
    )


def _compile_rule(index: int, rule: RuleSettings) -> _Rule:
    matcher = rule.matcher
    value: Any = getattr(rule, matcher)
    if matcher == "keywords":
        describe = "keywords: " + ", ".join(value)
        if len(describe) > 60:
            describe = describe[:59] + "…"
        value = _keyword_pattern(value)
    elif matcher == "features":
        describe = "features: " + ", ".join(value)
        mask = 0
        for feature in value:
            mask |= _FEATURE_BITS[feature]
        value = mask
    else:
        describe = f"{matcher.replace('_', ' ')}: {value}"
    return _Rule(rule.name or f"rules.{index}", rule.route, _KIND_OF[matcher], value, describe)


floodgate_plugin = RouterPlugin
