"""A model's deployments as the limiter sees them: their buckets, what their provider says
about its limits, their adaptive concurrency, and where to place the next request.

Each deployment's limits (the catalogue's ``deployments[].limits``: requests and tokens
per minute, requests in flight) are buckets of scope ``deployment`` keyed
``deployment:<entry>@<name>:<kind>``, in the plugin's store like every other bucket (a
fleet's Redis store shares them). Requests per minute are a bucket of that capacity
refilled over the minute, as providers count them. The limits in force are the
catalogue's, lowered to what the provider states (``x-ratelimit-limit-*``) and, for
``adaptive`` deployments, the concurrency AIMD found (:mod:`.adaptive`); a claim carries
its bucket's rate and capacity, so a changed limit applies to the next admission.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

import proxy

from .adaptive import Adaptive
from .learn import ProviderView, read_headers
from .plan import CONCURRENCY, REQUESTS, TOKENS, Plan, Spec, specs_for
from .settings import DeploymentPolicy, Limits
from .store import Claim

__all__ = ["Deployment", "Deployments", "used_on"]

#: Admissions remembered per deployment (to tell which the provider had not counted yet).
_SENT = 4096
#: Weight of the newest sample in a deployment's latency average.
_LATENCY = 0.2
#: Lower a shared store's bucket from a response only when the provider says less than this
#: share of its quota is left (or on a 429): a round trip per answer is not worth less.
_LOWER_BELOW = 0.5


class Deployment:
    """One deployment of a catalogue entry, now."""

    __slots__ = ("key", "model", "upstream", "weight", "configured", "rpm", "tpm", "adaptive", "in_flight",
                 "latency", "sent", "throttled", "throttled_until", "_specs")

    def __init__(self, key: str, model: str, upstream: str, settings: proxy.DeploymentSettings,
                 policy: DeploymentPolicy) -> None:
        self.key = key  # "<entry>@<deployment>": buckets, metric labels, status rows
        self.model = model
        self.upstream = upstream
        self.weight = settings.weight
        self.configured = settings.limits
        self.rpm: float | None = settings.limits.requests_per_minute  # in force: configured, or lower
        self.tpm: float | None = settings.limits.tokens_per_minute
        ceiling = settings.limits.max_concurrent
        self.adaptive = Adaptive(policy.adaptive, ceiling) if settings.adaptive and ceiling else None
        self.in_flight = 0  # this process's attempts on it now (see .inflight)
        self.latency: float | None = None  # recent time to first token (seconds)
        self.sent: deque[tuple[float, float]] = deque(maxlen=_SENT)  # (perf_counter, tokens) of admissions
        self.throttled = 0
        self.throttled_until = 0.0  # a 429's retry-after: passed over until then (plugin clock)
        self._specs: tuple[Spec, ...] | None = None

    @property
    def concurrency(self) -> int | None:
        """Requests in flight allowed now (adaptive, else configured)."""
        return self.adaptive.slots if self.adaptive is not None else self.configured.max_concurrent

    def specs(self) -> tuple[Spec, ...]:
        """Its buckets, with the limits in force now."""
        specs = self._specs
        if specs is None:
            rpm, tpm, slots = self.rpm, self.tpm, self.concurrency
            limits = Limits(requests_per_second=rpm / 60 if rpm else None,
                            burst=max(1, math.floor(rpm)) if rpm else None,
                            tokens_per_minute=max(1, math.floor(tpm)) if tpm else None, max_concurrent=slots)
            specs = self._specs = specs_for("deployment", self.key, f"deployment '{self.key}'", limits)
        return specs

    def changed(self) -> None:
        self._specs = None

    def sent_at(self, at: float, tokens: float) -> None:
        """A request was placed on it at ``at`` (``perf_counter``), reserving ``tokens``."""
        self.sent.append((at, tokens))

    def sent_since(self, started: float) -> tuple[int, float]:
        """Requests and tokens this process placed on it after ``started`` (``perf_counter``)."""
        requests, tokens = 0, 0.0
        for at, amount in reversed(self.sent):
            if at <= started:
                break
            requests += 1
            tokens += amount
        return requests, tokens

    def learn(self, view: ProviderView, started: float, status: int | None) -> list[tuple[Claim, float]]:
        """Follow what the provider said in an answer to a request sent at ``started``: its limits
        (never above the catalogue's), and the levels of its buckets to lower ours to.

        Levels are lowered, never raised: the provider's figures are a snapshot that does not
        count what was sent since, which is subtracted here (this process's share of it)."""
        if view.limit_requests is not None and view.limit_requests > 0:
            self._set_limit("rpm", view.limit_requests, self.configured.requests_per_minute)
        if view.limit_tokens is not None and view.limit_tokens > 0:
            self._set_limit("tpm", view.limit_tokens, self.configured.tokens_per_minute)
        caps: list[tuple[Claim, float]] = []
        by_kind = {spec.kind: spec for spec in self.specs()}
        requests, tokens = self.sent_since(started)
        throttled = status == 429
        for kind, remaining, limit, since in ((REQUESTS, view.remaining_requests, self.rpm, requests),
                                              (TOKENS, view.remaining_tokens, self.tpm, tokens)):
            spec = by_kind.get(kind)
            if spec is None or remaining is None or limit is None:
                continue
            if throttled or remaining < _LOWER_BELOW * limit:
                caps.append((spec.unit, remaining - since))
        if throttled and view.retry_after:
            # Empty until retry-after: the quota the provider says is out (requests if it says nothing);
            # a 429 while both show quota left is an overload, for adaptive concurrency, not a quota.
            unstated = view.remaining_requests is None and view.remaining_tokens is None
            for kind, remaining in ((REQUESTS, view.remaining_requests), (TOKENS, view.remaining_tokens)):
                spec = by_kind.get(kind)
                if spec is not None and ((remaining is not None and remaining < 1) or (unstated and kind is REQUESTS)):
                    caps.append((spec.unit, (1.0 if kind is REQUESTS else 0.0) - spec.rate * view.retry_after))
        return caps

    def _set_limit(self, which: str, stated: float, configured: float | None) -> None:
        limit = stated if configured is None else min(stated, configured)
        if getattr(self, which) != limit:
            setattr(self, which, limit)
            self._specs = None

    def observe_latency(self, ttft: float) -> None:
        self.latency = ttft if self.latency is None else self.latency + _LATENCY * (ttft - self.latency)


class Deployments:
    """Every deployment the catalogue declares, by ``<entry>@<name>``; placement among them."""

    def __init__(self, config: proxy.Config, policy: DeploymentPolicy, registry: CollectorRegistry,
                 rng: random.Random) -> None:
        self.config = config
        self.policy = policy
        self.rng = rng
        self.by_key: dict[str, Deployment] = {}
        for entry, model in config.models.items():
            for settings in model.deployments:
                key = f"{entry}@{settings.key}"
                self.by_key[key] = Deployment(key, entry, settings.upstream, settings, policy)
        self._limit = proxy.LabelCache(Gauge(
            "floodgate_ratelimit_deployment_limit", "A deployment's limits in force: the catalogue's, lowered "
            "to what its provider states, or found by adaptive concurrency (with workers: the lowest any "
            "live worker holds)", ["deployment", "kind"], registry=registry, multiprocess_mode="livemin"))
        self._in_flight = proxy.LabelCache(Gauge(
            "floodgate_ratelimit_deployment_in_flight", "Requests placed on a deployment, not finished "
            "(with workers: summed over the live ones)", ["deployment"], registry=registry,
            multiprocess_mode="livesum"))
        self._throttled = proxy.LabelCache(Counter(
            "floodgate_ratelimit_deployment_throttled", "Answers 429 from a deployment's provider",
            ["deployment"], registry=registry))
        for deployment in self.by_key.values():
            self.publish(deployment)

    @property
    def any_limited(self) -> bool:
        return any(d.specs() for d in self.by_key.values())

    def of(self, target: proxy.Target) -> Deployment | None:
        if target.deployment is None:
            return None
        entry = self.config.catalogue_name(target.model)
        return self.by_key.get(f"{entry}@{target.deployment}")

    def specs(self, target: proxy.Target) -> tuple[Spec, ...]:
        deployment = self.of(target)
        return deployment.specs() if deployment is not None else ()

    def refresh(self, plan: Plan) -> Plan:
        """``plan`` with its deployment's limits as they are now (same buckets, same amounts): a
        plan made before a limit changed must not take or give back against the old one."""
        deployment = self.of(plan.target) if plan.target is not None else None
        if deployment is None:
            return plan
        current = {spec.key: spec for spec in deployment.specs()}
        if all(current.get(spec.key, spec) is spec for spec in plan.specs if spec.scope == "deployment"):
            return plan
        specs, claims = [], []
        for spec, claim in zip(plan.specs, plan.claims):
            new = current.get(spec.key, spec) if spec.scope == "deployment" else spec
            specs.append(new)
            claims.append(claim if new is spec else Claim(new.key, new.rate, new.burst, claim.amount))
        return Plan(tuple(specs), tuple(claims), plan.reserved, plan.target)

    @staticmethod
    def candidates(route: proxy.Route | None) -> tuple[proxy.Target, ...]:
        """The route's first model's deployments (the leading targets of that model)."""
        if route is None or not route.targets or route.targets[0].deployment is None:
            return ()
        model = route.targets[0].model
        out = []
        for target in route.targets:
            if target.model != model:
                break
            out.append(target)
        return tuple(out)

    def order(self, candidates: Sequence[proxy.Target],
              unavailable: Callable[[proxy.Target], bool]) -> list[proxy.Target]:
        """The candidates a request may be placed on, by preference (the strategy's order): those no
        plugin calls unavailable (an open breaker) — all of them if every one is."""
        found = [(t, self.of(t)) for t in candidates]
        strategy = self.policy.strategy
        if strategy == "weighted":
            # A weighted random order (Efraimidis-Spirakis): the first is chosen in proportion to weight.
            keyed = sorted(found, key=lambda p: -self.rng.random() ** (1.0 / (p[1].weight if p[1] else 1.0)))
        elif strategy == "least_outstanding":
            keyed = sorted(found, key=lambda p: p[1].in_flight / p[1].weight if p[1] else 0.0)
        else:
            keyed = sorted(found, key=lambda p: (p[1].latency or 0.0) if p[1] else 0.0)
        ordered = [t for t, _ in keyed]
        return [t for t in ordered if not unavailable(t)] or ordered

    def observe(self, attempt: proxy.AttemptRecord, now: float, *,
                follow_headers: bool) -> tuple[list[tuple[Claim, float]], bool]:
        """An attempt on a deployment answered (or failed): follow what its provider says, adapt
        its concurrency. Returns the buckets to lower and whether it has more room now."""
        deployment = self.of(attempt.target)
        if deployment is None:
            return [], False
        status = attempt.status
        ttft = attempt.time_to_first_event if attempt.error is None else None
        if ttft is not None:
            deployment.observe_latency(ttft)
        if status == 429:
            self.throttled(deployment)
            if attempt.retry_after:
                deployment.throttled_until = max(deployment.throttled_until, now + attempt.retry_after)
        before = (deployment.rpm, deployment.tpm, deployment.concurrency)
        caps: list[tuple[Claim, float]] = []
        if follow_headers and (attempt.upstream_headers or attempt.retry_after):
            caps = deployment.learn(read_headers(attempt.upstream_headers, attempt.retry_after), attempt.started,
                                    status)
        adaptive = deployment.adaptive
        if adaptive is not None and adaptive.observe(now, overloaded=status == 429 or attempt.error == "timeout",
                                                     ttft=ttft, in_flight=deployment.in_flight):
            deployment.changed()
        if (deployment.rpm, deployment.tpm, deployment.concurrency) == before:
            return caps, False
        self.publish(deployment)
        return caps, (deployment.concurrency or 0) > (before[2] or 0)

    def failover_charges(self, ctx: proxy.RequestContext, placed: proxy.Target) -> list[tuple[Claim, float]]:
        """Attempts that went to another deployment of the model (a failover, a hedge) are charged
        there after the fact: a request and the tokens they used (their slots were not held)."""
        charges: list[tuple[Claim, float]] = []
        seen: set[str] = set()
        for attempt in ctx.attempts:
            target = attempt.target
            if target.deployment is None or target == placed or target.qualified in seen or attempt.status is None:
                continue
            seen.add(target.qualified)
            for spec in self.specs(target):
                if spec.kind is REQUESTS:
                    charges.append((spec.unit, -1.0))
                elif spec.kind is TOKENS:
                    charges.append((spec.unit, -float(used_on(ctx, target))))
        return charges

    def publish(self, deployment: Deployment) -> None:
        """Its limits in force, on the gauges."""
        key = deployment.key
        for kind, value in (("requests_per_minute", deployment.rpm), ("tokens_per_minute", deployment.tpm),
                            ("concurrency", deployment.concurrency)):
            if value is not None:
                self._limit(key, kind).set(value)
        self._in_flight(key).set(deployment.in_flight)

    def throttled(self, deployment: Deployment) -> None:
        deployment.throttled += 1
        self._throttled(deployment.key).inc()

    def status(self, levels: dict[str, float]) -> dict[str, dict[str, object]]:
        """Each deployment's row of ``/-/status`` (``levels``: bucket levels by bucket key)."""
        rows: dict[str, dict[str, object]] = {}
        for key, d in self.by_key.items():
            limits = {"requests_per_minute": d.rpm, "tokens_per_minute": d.tpm, "concurrency": d.concurrency}
            left = {kind: round(levels[spec.key], 1) for spec in d.specs() for kind in (spec.kind,)
                    if spec.kind is not CONCURRENCY and spec.key in levels}
            rows[key] = {"model": d.model, "upstream": d.upstream, "in_flight": d.in_flight,
                         "limits": {k: v for k, v in limits.items() if v is not None},
                         "configured": d.configured.model_dump(exclude_none=True), "remaining": left,
                         "adaptive": d.adaptive is not None, "throttled": d.throttled,
                         "ttft_ms": round(d.latency * 1000, 1) if d.latency is not None else None}
        return rows


def used_on(ctx: proxy.RequestContext, target: proxy.Target | None) -> int:
    """Tokens the attempts on ``target`` used (as reported, or estimated)."""
    return sum(a.usage.total_tokens for a in ctx.attempts if a.target == target and a.usage is not None)
