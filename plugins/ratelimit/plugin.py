"""The rate-limit plugin: plans (which buckets a request needs, how much it
takes), admission, settlement when it ends, the ``x-ratelimit-*`` headers and
the 429s."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

import proxy

from .queue import QUEUE_FULL, TIMEOUT, AdmissionQueue
from .settings import Limits, RateLimitSettings
from .store import BucketStore, Claim, MemoryBucketStore

__all__ = ["CONCURRENCY", "REQUESTS", "TOKENS", "Plan", "RateLimitPlugin", "Spec", "format_duration"]

log = logging.getLogger("floodgate.ratelimit")

REQUESTS, TOKENS, CONCURRENCY = "requests", "tokens", "concurrency"
_STATE = "ratelimit.admission"
_KEY_CACHE_SIZE = 10_000


def format_duration(seconds: float) -> str:
    """A duration in OpenAI's ``x-ratelimit-reset-*`` format: ``20ms``, ``1s``, ``1.5s``, ``6m0s``.

    Rounded up to the millisecond, so a client that waits this long is never early.
    """
    ms = math.ceil(seconds * 1000 - 1e-6) if seconds > 0 else 0
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}s" if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


@dataclass(frozen=True, slots=True)
class Spec:
    """One bucket a request may need: its scope, kind, key and parameters."""

    scope: str  # global | key | model | upstream
    kind: str  # requests | tokens | concurrency
    key: str
    rate: float
    burst: float
    what: str  # for messages: "the gateway", "key 'alice'", ...
    unit: Claim  # the claim of one unit (requests, concurrency)


def _specs(scope: str, name: str, what: str, limits: Limits | None) -> tuple[Spec, ...]:
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


@dataclass(slots=True)
class Plan:
    """The buckets one request needs, and how much it takes from each."""

    specs: tuple[Spec, ...]
    claims: tuple[Claim, ...]
    reserved: int  # tokens reserved (0 if no token limit applies)


class RateLimitPlugin:
    """Token buckets for requests, tokens and concurrency; queue or reject when empty."""

    name = "ratelimit"

    def __init__(self, store: BucketStore | None = None) -> None:
        self.store: BucketStore = store if store is not None else MemoryBucketStore()
        self.settings = RateLimitSettings()
        self._configured = False
        self._queueing = True
        self._per_key: dict[str, Any] = {}
        self._global: tuple[Spec, ...] = ()
        self._models: dict[str, tuple[Spec, ...]] = {}
        self._upstreams: dict[str, tuple[Spec, ...]] = {}
        self._key_cache: dict[str, tuple[Any, tuple[Spec, ...]]] = {}
        self.queue = AdmissionQueue(self.store, admit=self._admitted_from_queue, reject=self._rejection)

    # -- configuration ------------------------------------------------------
    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        settings = config.plugin_settings(self.name, RateLimitSettings)
        errors = [
            config.error(("plugins", self.name, section, name),
                         f"unknown {noun} {name!r} (known: {', '.join(known) or 'none'})")
            for section, noun, known, given in (("models", "model", config.models, settings.models),
                                                ("upstreams", "upstream", config.upstreams, settings.upstreams))
            for name in given if name not in known
        ]
        if errors:
            raise proxy.ConfigErrors(errors)
        self.settings = settings
        self._queueing = settings.mode == "queue"
        self._global = _specs("global", "-", "the gateway", settings.global_)
        self._models = {m: s for m, lim in settings.models.items() if (s := _specs("model", m, f"model '{m}'", lim))}
        self._upstreams = {u: s for u, lim in settings.upstreams.items()
                           if (s := _specs("upstream", u, f"upstream '{u}'", lim))}
        self._per_key = settings.per_key.model_dump(exclude_none=True) if settings.per_key else {}
        # Nothing configured: requests pass with one dict lookup (a key may still carry overrides).
        self._configured = bool(self._global or self._models or self._upstreams or self._per_key)

        self._m_admitted = Counter("floodgate_ratelimit_admitted", "Requests admitted by the rate limiter",
                                   registry=registry)
        self._m_rejected = proxy.LabelCache(Counter(
            "floodgate_ratelimit_rejected", "Requests refused with 429, by the scope of the bucket that was "
            "short and the reason", ["scope", "reason"], registry=registry))
        self.queue.configure(settings.queue, registry)

    @proxy.hookimpl
    def proxy_startup(self) -> None:
        self.queue.bind_loop()

    @proxy.hookimpl
    def proxy_shutdown(self) -> None:
        self.queue.close()

    # -- admission ----------------------------------------------------------
    @proxy.hookimpl
    def proxy_admit(self, ctx: proxy.RequestContext) -> Awaitable[None] | None:
        """Take from every bucket the request needs, or queue / reject.

        Synchronous unless the request must wait: then it returns the waiting
        coroutine (the core awaits what is awaitable).
        """
        if not self._configured and ctx.principal.policy.rate_limit is None:
            return None
        plan = self._plan(ctx)
        if plan is None:
            return None
        queue = self.queue
        now = queue.now()
        blocker = queue.blocker(plan)
        if blocker is not None:  # earlier waiters are short on a bucket this one needs: get in line
            self._set_headers(ctx, plan, self.store.peek(plan.claims, now).levels)
            return queue.enqueue(ctx, plan, blocker, now)
        grant = self.store.take(plan.claims, now)
        self._set_headers(ctx, plan, grant.levels)
        if grant.granted:
            self._admitted(ctx, plan)
            return None
        spec = plan.specs[grant.blocking]
        if not self._queueing or (grant.wait > queue.max_wait and math.isfinite(grant.wait)):
            raise self._rejection(spec, spec.kind, grant.wait)
        return queue.enqueue(ctx, plan, spec, now, refill=grant.wait)

    def _plan(self, ctx: proxy.RequestContext) -> Plan | None:
        specs = self._global + self._key_specs(ctx.principal)
        target = ctx.route.targets[0] if ctx.route is not None and ctx.route.targets else None
        if target is not None:
            specs += self._models.get(target.model, ()) + self._upstreams.get(target.upstream, ())
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
        return Plan(specs, tuple(claims), reserved)

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
        specs = _specs("key", principal.name, f"key '{principal.name}'", validated)
        if len(self._key_cache) >= _KEY_CACHE_SIZE:
            self._key_cache.clear()
        self._key_cache[principal.name] = (overrides, specs)
        return specs

    def _admitted(self, ctx: proxy.RequestContext, plan: Plan) -> None:
        ctx.state[_STATE] = plan
        self._m_admitted.inc()

    def _admitted_from_queue(self, ctx: proxy.RequestContext, plan: Plan, levels: tuple[float, ...]) -> None:
        self._set_headers(ctx, plan, levels)
        self._admitted(ctx, plan)

    # -- settlement ---------------------------------------------------------
    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        """Release concurrency slots, settle the token reservation, wake the queue."""
        plan: Plan | None = ctx.state.pop(_STATE, None)
        if plan is None:
            return
        now = self.queue.now()
        reached = bool(ctx.attempts)
        used = ctx.usage.total_tokens if reached and ctx.usage is not None else 0
        store = self.store
        for spec, claim in zip(plan.specs, plan.claims):
            if spec.kind is CONCURRENCY:
                store.give_back(claim, 1.0, now)
            elif spec.kind is TOKENS:
                if claim.amount != used:
                    store.give_back(claim, claim.amount - used, now)  # refund, or charge the overrun
            elif not reached:
                store.give_back(claim, claim.amount, now)
        self.queue.wake(now)

    # -- responses ----------------------------------------------------------
    @staticmethod
    def _set_headers(ctx: proxy.RequestContext, plan: Plan, levels: tuple[float, ...]) -> None:
        """OpenAI's x-ratelimit-* headers from the most restrictive bucket of each kind."""
        best: dict[str, int] = {}
        for i, spec in enumerate(plan.specs):
            j = best.get(spec.kind)
            if j is None or levels[i] < levels[j]:
                best[spec.kind] = i
        headers = ctx.response_headers
        for kind in (REQUESTS, TOKENS):
            i = best.get(kind, -1)
            if i < 0:
                continue
            spec, level = plan.specs[i], levels[i]
            headers[f"x-ratelimit-limit-{kind}"] = str(int(spec.burst))
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(level + 1e-9)))
            headers[f"x-ratelimit-reset-{kind}"] = format_duration((spec.burst - level) / spec.rate)

    def _rejection(self, spec: Spec, reason: str, wait: float) -> proxy.Rejection:
        self._m_rejected(spec.scope, reason).inc()
        retry = wait if 0 < wait < math.inf else 1.0
        again = f"Please try again in {format_duration(retry)}."
        if reason == QUEUE_FULL:
            message = (f"Rate limit reached for {spec.what} and the waiting queue is full "
                       f"({self.settings.queue.max_length} requests). {again}")
        elif reason == TIMEOUT:
            message = (f"Rate limit reached for {spec.what}: not admitted within "
                       f"{self.settings.queue.max_wait_ms:g} ms. {again}")
        elif spec.kind is CONCURRENCY:
            message = f"Too many concurrent requests for {spec.what}: limit {spec.burst:g}. {again}"
        elif spec.kind is TOKENS:
            message = f"Rate limit reached for {spec.what} on tokens per min (TPM): limit {spec.burst:g}. {again}"
        else:
            message = (f"Rate limit reached for {spec.what} on requests per second: limit {spec.rate:g}/s, "
                       f"burst {spec.burst:g}. {again}")
        headers = {"retry-after": str(max(1, math.ceil(retry))),
                   "retry-after-ms": str(max(1, math.ceil(retry * 1000)))}
        return proxy.Rejection(429, message, code="rate_limit_exceeded",
                               type="tokens" if spec.kind is TOKENS else "requests", headers=headers)

    def _too_large(self, spec: Spec, reserved: int) -> proxy.Rejection:
        self._m_rejected(spec.scope, TOKENS).inc()
        return proxy.Rejection(
            429, f"Request too large for {spec.what} on tokens per min (TPM): limit {spec.burst:g}, requested "
            f"{reserved} (estimated prompt + max output tokens). Reduce the prompt or max_tokens.",
            code="rate_limit_exceeded", type="tokens", should_retry=False)
