"""The router plugin: configuration, classification and the per-request hooks."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

import proxy

from .body import features, prompt_tokens_bound, user_turns
from .settings import RouterSettings
from .tiers import (
    KEYWORDS,
    MAX_FIELDS,
    MAX_TOKENS,
    MIN_TOKENS,
    MIN_TURNS,
    RULE_DEFAULT,
    RULE_HEADER_FORCED,
    RULE_REQUESTED,
    Decision,
    Rule,
    Tier,
    check,
    compile_rule,
    compile_tier,
)

__all__ = ["RULE_HEADER", "TIER_HEADER", "RouterPlugin"]

TIER_HEADER = "x-floodgate-tier"
RULE_HEADER = "x-floodgate-route-rule"
_OVERRIDDEN_CACHE_SIZE = 1024


class RouterPlugin:
    """Routes ``auto`` (and aliases of it) to a tier chosen by rules; route names directly."""

    name = "router"
    settings_model = RouterSettings

    def __init__(self) -> None:
        self.settings = RouterSettings()
        self.selector = "auto"
        self.default = ""
        self.tiers: dict[str, Tier] = {}
        self.rules: tuple[Rule, ...] = ()
        # client-facing model name -> route name or the selector
        self._entries: dict[str, str] = {}
        self._decisions: proxy.LabelCache | None = None
        # (route, overrides) -> its targets with them: most requests share a handful of overrides
        self._overridden: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[proxy.Target, ...]] = {}

    # -- configuration --------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        self.settings = settings = config.plugin_settings(self.name, self.settings_model)
        self.selector = settings.selector
        self.default = settings.default or ""
        errors = check(config, settings)
        if errors:
            raise proxy.ConfigErrors(errors)
        self.tiers = {name: compile_tier(config, name, route) for name, route in settings.routes.items()}
        self.rules = tuple(compile_rule(i, rule) for i, rule in enumerate(settings.rules))
        entries = {name: name for name in self.tiers}
        if self.tiers:
            entries[self.selector] = self.selector
            for alias, target in config.aliases.items():
                if target in entries:
                    entries[alias] = entries[target]
        self._entries = entries
        self._overridden = {}
        self._decisions = proxy.LabelCache(Counter(
            "floodgate_router_decisions", "Routing decisions by route and matched rule",
            ["route", "rule"], registry=registry))

    @proxy.hookimpl
    def proxy_route_names(self, config: proxy.Config) -> list[str]:
        return [*self.tiers, self.selector] if self.tiers else []

    # -- classification (pure: used by the hook and the CLI) -------------------
    def classify(self, body: Mapping[str, Any], ctx: proxy.RequestContext | None = None) -> Decision:
        """The tier the selector picks for a request body: first matching rule, else the default.

        Each input (text, token estimate, turns, features) is computed only when
        a rule needs it, at most once; with ``ctx`` the text and the estimate are the
        request's own (computed once for every plugin).
        """
        text: str | None = None
        tokens: int | None = None
        bound = -1
        turns = -1
        found = -1
        for rule in self.rules:
            kind = rule.kind
            if kind == KEYWORDS:
                if text is None:
                    text = (ctx.last_user_text() if ctx is not None else proxy.last_user_text(body)).lower()
                hit = rule.value.search(text) is not None
            elif kind == MIN_TOKENS:
                if tokens is None:
                    if bound == -1:
                        bound = prompt_tokens_bound(body) or 0  # 0: unknown
                    if 0 < bound < rule.value:
                        continue  # certainly shorter: no estimate needed
                    tokens = self._prompt_tokens(body, ctx)
                hit = tokens >= rule.value
            elif kind == MAX_TOKENS:
                if tokens is None:
                    tokens = self._prompt_tokens(body, ctx)
                hit = tokens <= rule.value
            elif kind == MIN_TURNS:
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

    @staticmethod
    def _prompt_tokens(body: Mapping[str, Any], ctx: proxy.RequestContext | None) -> int:
        return ctx.estimated_prompt_tokens() if ctx is not None else proxy.estimate_prompt_tokens(dict(body))

    def decide(self, model: str | None, body: Mapping[str, Any],
               ctx: proxy.RequestContext | None = None) -> Decision | None:
        """The decision for a client asking for ``model``; ``None`` when the router does not handle it."""
        entry = self._entries.get(model) if model is not None else None
        if entry is None:
            return None
        if entry == self.selector:
            return self.classify(body, ctx)
        return Decision(entry, RULE_REQUESTED)

    # -- per request ----------------------------------------------------------
    @proxy.hookimpl
    def proxy_route(self, ctx: proxy.RequestContext) -> proxy.Route | None:
        endpoint = ctx.endpoint
        if endpoint not in MAX_FIELDS:
            return None
        forced = ctx.headers.get(TIER_HEADER)
        decision = (Decision(self._forced_tier(ctx, forced), RULE_HEADER_FORCED) if forced is not None
                    else self.decide(ctx.model, ctx.body, ctx))
        if decision is None:
            return None  # an explicit catalogue model (or unknown): the core decides
        tier = self.tiers[decision.route]
        overrides = tier.overrides(ctx.body, endpoint)
        targets = self._with_overrides(decision.route, tier, overrides) if overrides else tier.targets
        ctx.state["router.rule"] = decision.rule
        ctx.state["router.decision"] = decision
        ctx.response_headers[RULE_HEADER] = decision.rule
        return proxy.Route(name=decision.route, targets=targets)

    def _with_overrides(self, route: str, tier: Tier, overrides: dict[str, Any]) -> tuple[proxy.Target, ...]:
        """The tier's targets with ``overrides``, built once per distinct overrides (targets are frozen)."""
        key = (route, tuple(overrides.items()))
        try:
            targets = self._overridden.get(key)
        except TypeError:  # an unhashable value (a JSON object): built for this request only
            return tuple(t.with_overrides(**overrides) for t in tier.targets)
        if targets is None:
            if len(self._overridden) >= _OVERRIDDEN_CACHE_SIZE:
                self._overridden.clear()
            targets = self._overridden[key] = tuple(t.with_overrides(**overrides) for t in tier.targets)
        return targets

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
        if not ctx.principal.policy.force_tier:
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
        from .cli import add_route_command  # not at the top: cli.py imports this module

        add_route_command(subparsers)

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
            "models": " → ".join(t.qualified for t in tier.targets),
            "max_tokens": ", ".join(x for x in limits if x) or "client's own",
        }
        if tier.system_prompt:
            prompt = " ".join(tier.system_prompt.split())
            lines["system"] = prompt if len(prompt) <= 60 else prompt[:59] + "…"
        if tier.params:
            lines["params"] = ", ".join(f"{k}={v!r}" for k, v in tier.params.items())
        return lines
