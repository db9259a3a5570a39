"""The ``plugins.router`` block: tiers (routes), rules and the selector."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

import proxy

__all__ = ["MATCHERS", "Feature", "MaxTokensSettings", "RouteSettings", "RouterSettings", "RuleSettings"]

# Overriding these would break the request or undo the client's choice; each says what to use instead.
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
#: The fields of a rule that match a request; a rule has exactly one.
MATCHERS = ("keywords", "min_prompt_tokens", "max_prompt_tokens", "min_turns", "features")


class MaxTokensSettings(proxy.Settings):
    """Output length of a tier, applied to whichever field the client used."""

    default: proxy.PositiveInt | None = None
    """Set when the client gave no output limit, in the endpoint's own field (`max_tokens` for
    chat and completions, `max_output_tokens` for Responses); at most `cap`."""
    cap: proxy.PositiveInt | None = None
    """Upper bound of the client's own limit, in whichever field it used (`max_tokens`,
    `max_completion_tokens`, `max_output_tokens`); never translated into another."""

    @model_validator(mode="after")
    def _default_within_cap(self) -> MaxTokensSettings:
        if self.default is not None and self.cap is not None and self.default > self.cap:
            raise ValueError(f"default ({self.default}) is larger than cap ({self.cap})")
        return self


class RouteSettings(proxy.Settings):
    """One tier."""

    model: str
    """The catalogue model tried first (a concrete name, not a pattern nor an embedding model)."""
    fallbacks: list[str] | None = None
    """Models tried after it, in order; unset: `model`'s catalogue fallbacks."""
    max_tokens: MaxTokensSettings = MaxTokensSettings()
    """The route's output length, for every model of the route."""
    system_prompt: str | None = Field(None, min_length=1)
    """A persona prepended as a system message (Responses: before `instructions`; legacy
    completions have no place for it)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Request fields to override (e.g. `temperature`); not `model`, `messages`, `prompt`,
    `input`, `instructions`, `stream`, `stream_options` nor the token limits."""

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
    """The route a matching rule selects."""
    name: str | None = None
    """Shown in `x-floodgate-route-rule` and metrics: unique, ASCII letters, digits and
    `. _ : -`, not `default`, `requested` or `header`; unset: `rules.<index>`."""
    keywords: list[proxy.NonEmptyStr] | None = Field(None, min_length=1)
    """Matcher: any of these substrings of the last user message, in any case (Chinese works as
    substrings)."""
    min_prompt_tokens: proxy.NonNegativeInt | None = None
    """Matcher: an estimated prompt of at least this many tokens (offline estimate, no
    tokenizer download)."""
    max_prompt_tokens: proxy.NonNegativeInt | None = None
    """Matcher: an estimated prompt of at most this many tokens."""
    min_turns: proxy.PositiveInt | None = None
    """Matcher: at least this many user messages."""
    features: list[Feature] | None = Field(None, min_length=1)
    """Matcher: any of these in the request: `tools` (or `functions`), `response_format` (a JSON
    one), `images`."""

    @field_validator("keywords")
    @classmethod
    def _no_blank_keyword(cls, keywords: list[str] | None) -> list[str] | None:
        if keywords and any(not k.strip() for k in keywords):
            raise ValueError("keywords must not be blank")
        return keywords

    @model_validator(mode="after")
    def _one_matcher(self) -> RuleSettings:
        given = [m for m in MATCHERS if getattr(self, m) is not None]
        if len(given) != 1:
            found = f" (found {', '.join(given)})" if given else ""
            raise ValueError(f"a rule needs exactly one matcher of {', '.join(MATCHERS)}{found}")
        return self

    @property
    def matcher(self) -> str:
        return next(m for m in MATCHERS if getattr(self, m) is not None)


class RouterSettings(proxy.Settings):
    """Complexity-based routing: a request for the selector (or an alias of it) is classified by
    the first matching rule into a route (a tier: its models, output length, persona); a request
    for a route name gets that route. Each rule has exactly one matcher; rules are tried in
    order. See the [README](../README.md#pluginsrouter--complexity-based-routing)."""

    selector: str = "auto"
    """The model name that asks for classification with `rules`."""
    default: str | None = None
    """The route when no rule matches; required when there are routes."""
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    """The routes (tiers) by name: ASCII letters, digits and `. _ : -` (names travel in headers;
    give a route a Chinese client-facing name with an alias); not a catalogue model's name."""
    rules: list[RuleSettings] = Field(default_factory=list)
    """Classification rules, tried in order; the first that matches picks the route."""
