"""Which buckets a request needs and how much it takes from each: its :class:`Plan`.

Model calls need the ``global`` buckets, their key's, and those of the target the
request is placed on — the route's first, or the deployment of its first model the
plugin chose (its catalogue model, its upstream and its deployment). Passthrough requests
(``files``, ``batches``, ...) have no route: they need the ``global`` buckets,
their key's and the default upstream's (the first of ``upstreams``, where
passthrough goes), requests and concurrency only; their token usage is unknown,
so they reserve no tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import proxy

from .settings import Limits, RateLimitSettings
from .store import Claim

__all__ = ["CONCURRENCY", "REQUESTS", "TOKENS", "Plan", "Planner", "Spec"]

REQUESTS, TOKENS, CONCURRENCY = "requests", "tokens", "concurrency"
_KEY_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Spec:
    """One bucket a request may need: its scope, kind, key and parameters."""

    scope: str  # global | key | model | upstream | deployment
    kind: str  # requests | tokens | concurrency
    key: str
    rate: float
    burst: float
    what: str  # for messages: "the gateway", "key 'alice'", ...
    unit: Claim  # the claim of one unit (requests, concurrency)


def specs_for(scope: str, name: str, what: str, limits: Limits | None) -> tuple[Spec, ...]:
    """The buckets of one scope's limits (none when it has none)."""
    if limits is None:
        return ()
    out: list[tuple[str, float, float]] = []
    if limits.requests_per_second is not None:
        rps = limits.requests_per_second
        out.append((REQUESTS, rps, float(limits.burst or max(1, math.ceil(rps)))))
    if limits.tokens_per_minute is not None:
        out.append((TOKENS, limits.tokens_per_minute / 60.0, float(limits.tokens_per_minute)))
    if limits.max_concurrent is not None:
        out.append((CONCURRENCY, 0.0, float(limits.max_concurrent)))
    return tuple(
        Spec(scope, kind, key, rate, burst, what, Claim(key, rate, burst, 1.0))
        for kind, rate, burst in out
        for key in (f"{scope}:{name}:{kind}",)
    )


def _untimed(specs: tuple[Spec, ...]) -> tuple[Spec, ...]:
    """Without the token buckets (for requests whose token usage is unknown)."""
    return tuple(s for s in specs if s.kind is not TOKENS)


@dataclass(slots=True)
class Plan:
    """The buckets one request needs, and how much it takes from each."""

    specs: tuple[Spec, ...]
    claims: tuple[Claim, ...]
    reserved: int  # tokens reserved (0 if no token limit applies)
    target: proxy.Target | None = None  # where it is placed (a deployment, when the model has several)


class Planner:
    """The configured limits by scope, turned into one request's plan.

    :param default_upstream: where passthrough requests go (their upstream scope).
    :param too_large: the rejection of a reservation larger than a token bucket.
    """

    def __init__(self, settings: RateLimitSettings, default_upstream: str | None,
                 too_large: Callable[[Spec, int], proxy.Rejection],
                 catalogue_name: Callable[[str], str | None] = lambda model: model,
                 deployment_specs: Callable[[proxy.Target], tuple[Spec, ...]] | None = None,
                 deployments_limited: bool = False) -> None:
        self.settings = settings
        # Per-model limits are keyed by catalogue entry: a pattern's limit is shared by every
        # name it serves (and a client-chosen name never makes a bucket of its own).
        self._catalogue_name = catalogue_name
        self._too_large = too_large
        self._global = specs_for("global", "-", "the gateway", settings.global_)
        self._models = {m: s for m, lim in settings.models.items() if (s := specs_for("model", m, f"model '{m}'", lim))}
        self._upstreams = {u: s for u, lim in settings.upstreams.items()
                           if (s := specs_for("upstream", u, f"upstream '{u}'", lim))}
        self._passthrough = _untimed(self._global + self._upstreams.get(default_upstream or "", ()))
        self._per_key = settings.per_key.model_dump(exclude_none=True) if settings.per_key else {}
        self._key_cache: dict[str, tuple[Any, tuple[Spec, ...]]] = {}
        self._deployment_specs = deployment_specs
        #: Anything configured (else requests pass with one lookup; a key may still carry overrides).
        self.configured = bool(self._global or self._models or self._upstreams or self._per_key
                               or deployments_limited)

    def plan(self, ctx: proxy.RequestContext, target: proxy.Target | None = None, *,
             own_key: bool = True) -> Plan | None:
        """The request's plan on ``target`` (default: its route's first), ``None`` when no limit
        applies to it. ``own_key=False``: without the caller's own limits (a route's capacity)."""
        key_specs = self._key_specs(ctx.principal) if own_key else ()
        if ctx.kind is proxy.EndpointKind.PASSTHROUGH:
            specs = self._passthrough + _untimed(key_specs)
            return Plan(specs, tuple(s.unit for s in specs), 0) if specs else None
        specs = self._global + key_specs
        if target is None and ctx.route is not None and ctx.route.targets:
            target = ctx.route.targets[0]
        if target is not None:
            if self._models:
                specs += self._models.get(self._catalogue_name(target.model) or "", ())
            specs += self._upstreams.get(target.upstream, ())
            if self._deployment_specs is not None and target.deployment is not None:
                specs += self._deployment_specs(target)
        if not specs:
            return None
        reserved = 0
        claims: list[Claim] = []
        for spec in specs:
            if spec.kind is TOKENS:
                if not reserved:
                    reserved = self._reservation(ctx, target)
                if reserved > spec.burst:
                    raise self._too_large(spec, reserved)
                claims.append(Claim(spec.key, spec.rate, spec.burst, float(reserved)))
            else:
                claims.append(spec.unit)
        return Plan(specs, tuple(claims), reserved, target)

    def _reservation(self, ctx: proxy.RequestContext, target: proxy.Target | None) -> int:
        """Estimated prompt tokens plus the most output the request may produce."""
        prompt, output = proxy.request_token_bounds(
            ctx.body, ctx.endpoint, target.overrides if target is not None else None,
            self.settings.default_max_tokens, prompt=ctx.estimated_prompt_tokens())
        return max(1, prompt + output)

    def _key_specs(self, principal: proxy.Principal) -> tuple[Spec, ...]:
        overrides = principal.policy.rate_limit
        cached = self._key_cache.get(principal.name)
        if cached is not None and cached[0] is overrides:
            return cached[1]
        limits = dict(self._per_key)
        if overrides is not None:  # a typed value (proxy.RateLimits): validated where it was built
            limits.update((k, v) for k, v in overrides.model_dump(exclude_none=True).items())
        validated = Limits.model_validate(limits) if limits else None
        specs = specs_for("key", principal.name, f"key '{principal.name}'", validated)
        if len(self._key_cache) >= _KEY_CACHE_SIZE:
            self._key_cache.clear()
        self._key_cache[principal.name] = (overrides, specs)
        return specs
