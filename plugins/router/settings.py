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

    default: proxy.PositiveInt | None = None  # set when the client gave no limit
    cap: proxy.PositiveInt | None = None  # upper bound of the client's own limit

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
    keywords: list[proxy.NonEmptyStr] | None = Field(None, min_length=1)
    min_prompt_tokens: proxy.NonNegativeInt | None = None
    max_prompt_tokens: proxy.NonNegativeInt | None = None
    min_turns: proxy.PositiveInt | None = None
    features: list[Feature] | None = Field(None, min_length=1)

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
    """``plugins.router``."""

    selector: str = "auto"  # the route name that classifies
    default: str | None = None  # the route when no rule matches (required with routes)
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    rules: list[RuleSettings] = Field(default_factory=list)
