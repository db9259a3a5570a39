"""Token-bucket rate limiting with a priority queue (the ``ratelimit`` plugin).

Limits apply per *scope*: ``global`` (all traffic), ``key`` (per principal:
``per_key`` defaults, overridden by ``principal.settings["rate_limit"]``),
``model`` (the catalogue model of the route's first target) and ``upstream``
(the upstream of that target). Each scope may limit three things:

* requests: ``requests_per_second`` with a ``burst`` (bucket capacity);
* tokens: ``tokens_per_minute``. Admission reserves the estimated prompt plus
  the requested maximum output (``max_tokens`` / ``max_completion_tokens`` /
  ``max_output_tokens``, the route target's overrides winning, else
  ``default_max_tokens``); ``proxy_finished`` refunds or charges the difference
  to the real usage. A request that never reached an upstream gives everything
  back, its request token included;
* concurrency: ``max_concurrent`` requests in flight (a bucket that never
  refills; the slot is returned in ``proxy_finished``).

A request takes from every bucket it needs or from none. When one is short,
``mode: reject`` answers 429 ``rate_limit_exceeded`` with ``retry-after`` /
``retry-after-ms``; ``mode: queue`` parks the request in one queue ordered by
(-priority, arrival) for up to ``queue.max_wait_ms``. Waiting is event driven:
one timer for the whole queue, set to when the first blocked waiter's buckets
will have refilled (deficit / rate), plus a wake-up whenever a request ends and
gives something back. Waiters only queue behind earlier waiters blocked on a
bucket they also need, so one saturated key does not stall the others.

Every admission sets OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
headers (the most restrictive bucket of each kind; ``reset`` is the time until
it is full again), so they are on 200 and 429 responses alike.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import Field, ValidationError

import proxy

from .store import BucketStore, Claim, MemoryBucketStore

__all__ = ["Limits", "QueueSettings", "RateLimitPlugin", "RateLimitSettings", "format_duration"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

log = logging.getLogger("floodgate.ratelimit")

REQUESTS, TOKENS, CONCURRENCY = "requests", "tokens", "concurrency"
QUEUE_FULL, TIMEOUT = "queue_full", "timeout"
_STATE = "ratelimit.admission"
_MAX_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_KEY_CACHE_SIZE = 10_000
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Limits(proxy.Settings):
    """The limits of one scope (also the keys of ``principal.settings["rate_limit"]``).

    Every key is optional; an absent key is no limit of that kind.
    """

    #: Sustained request rate (refill of the request bucket).
    requests_per_second: float | None = Field(None, gt=0)
    #: Request bucket capacity: how many requests may arrive at once. Default ``ceil(requests_per_second)``.
    burst: int | None = Field(None, ge=1)
    #: Token bucket: capacity and refill per minute (prompt + completion tokens).
    tokens_per_minute: int | None = Field(None, gt=0)
    #: Requests in flight at the same time (admission until the response is finished).
    max_concurrent: int | None = Field(None, gt=0)


class QueueSettings(proxy.Settings):
    """``mode: queue``: how long and how many requests may wait for a bucket."""

    max_wait_ms: float = Field(2000.0, gt=0)
    max_length: int = Field(1000, ge=1)


class RateLimitSettings(proxy.Settings):
    """The ``plugins.ratelimit`` block. Absent scopes are not limited."""

    mode: Literal["queue", "reject"] = "queue"
    queue: QueueSettings = QueueSettings()
    global_: Limits | None = Field(None, alias="global")
    #: Defaults for every key (principal); ``principal.settings["rate_limit"]`` overrides them per key.
    per_key: Limits | None = None
    #: Per catalogue model (the route's first target).
    models: dict[str, Limits] = Field(default_factory=dict)
    #: Per upstream (of the route's first target).
    upstreams: dict[str, Limits] = Field(default_factory=dict)
    #: Output tokens reserved when a request sets no max_tokens / max_completion_tokens / max_output_tokens.
    default_max_tokens: int = Field(1024, ge=0)


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
class _Spec:
    """One bucket a request may need: its scope, kind, key and parameters."""

    scope: str  # global | key | model | upstream
    kind: str  # requests | tokens | concurrency
    key: str
    rate: float
    burst: float
    what: str  # for messages: "the gateway", "key 'alice'", ...
    unit: Claim  # the claim of one unit (requests, concurrency)


def _specs(scope: str, name: str, what: str, limits: Limits | None) -> tuple[_Spec, ...]:
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
        _Spec(scope, kind, key, rate, burst, what, Claim(key, rate, burst, 1.0))
        for kind, rate, burst in out
        for key in (f"{scope}:{name}:{kind}",)
    )


@dataclass(slots=True)
class _Plan:
    """The buckets one request needs, and how much it takes from each."""

    specs: tuple[_Spec, ...]
    claims: tuple[Claim, ...]
    reserved: int  # tokens reserved (0 if no token limit applies)


class _Waiter:
    __slots__ = ("blocker", "ctx", "deadline", "enqueued", "future", "order", "plan", "queued")

    def __init__(self, order: tuple[float, int], ctx: proxy.RequestContext, plan: _Plan,
                 future: asyncio.Future[None], now: float, deadline: float, blocker: _Spec) -> None:
        self.order = order
        self.ctx = ctx
        self.plan = plan
        self.future = future
        self.enqueued = now
        self.deadline = deadline
        self.blocker = blocker  # the bucket it waits for (for the timeout's labels)
        self.queued = True

    def __lt__(self, other: _Waiter) -> bool:
        return self.order < other.order


class RateLimitPlugin:
    """Token buckets for requests, tokens and concurrency; queue or reject when empty."""

    name = "ratelimit"

    def __init__(self, store: BucketStore | None = None) -> None:
        self.store: BucketStore = store if store is not None else MemoryBucketStore()
        self.settings = RateLimitSettings()
        self._configured = False
        self._queueing = True
        self._max_wait = 2.0
        self._per_key: dict[str, Any] = {}
        self._global: tuple[_Spec, ...] = ()
        self._models: dict[str, tuple[_Spec, ...]] = {}
        self._upstreams: dict[str, tuple[_Spec, ...]] = {}
        self._key_cache: dict[str, tuple[Any, tuple[_Spec, ...]]] = {}
        self._queue: list[_Waiter] = []
        self._blocked: dict[str, _Spec] = {}  # bucket key -> spec a queued waiter is short on
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

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
        self._max_wait = settings.queue.max_wait_ms / 1000.0
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
        self._m_wait = Histogram("floodgate_ratelimit_queue_wait_seconds", "Time requests spent in the "
                                 "rate-limit queue (admitted, timed out or disconnected)",
                                 buckets=WAIT_BUCKETS, registry=registry)
        self._m_queue = Gauge("floodgate_ratelimit_queue_length", "Requests waiting in the rate-limit queue",
                              registry=registry)

    @proxy.hookimpl
    def proxy_startup(self) -> None:
        self._loop = asyncio.get_running_loop()

    @proxy.hookimpl
    def proxy_shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- admission ----------------------------------------------------------
    @proxy.hookimpl
    def proxy_admit(self, ctx: proxy.RequestContext) -> Awaitable[None] | None:
        """Take from every bucket the request needs, or queue / reject.

        Synchronous unless the request must wait: then it returns the waiting
        coroutine (the core awaits what is awaitable).
        """
        if not self._configured and "rate_limit" not in ctx.principal.settings:
            return None
        plan = self._plan(ctx)
        if plan is None:
            return None
        loop = self._loop or self._bind_loop()
        now = loop.time()
        if self._queue:
            blocker = next((s for s in plan.specs if s.key in self._blocked), None)
            if blocker is not None:  # earlier waiters are short on a bucket this one needs: get in line
                self._set_headers(ctx, plan, self.store.peek(plan.claims, now).levels)
                return self._enqueue(ctx, plan, blocker, now)
        grant = self.store.take(plan.claims, now)
        self._set_headers(ctx, plan, grant.levels)
        if grant.granted:
            self._admitted(ctx, plan)
            return None
        spec = plan.specs[grant.blocking]
        if not self._queueing or (grant.wait > self._max_wait and math.isfinite(grant.wait)):
            raise self._rejection(spec, spec.kind, grant.wait)
        waiting = self._enqueue(ctx, plan, spec, now)
        self._blocked[spec.key] = spec
        if math.isfinite(grant.wait):
            self._schedule(now + grant.wait)
        return waiting

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _plan(self, ctx: proxy.RequestContext) -> _Plan | None:
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
        return _Plan(specs, tuple(claims), reserved)

    def _reservation(self, ctx: proxy.RequestContext, target: proxy.Target | None) -> int:
        """Estimated prompt tokens plus the most output the request may produce."""
        body = ctx.body
        prompt = proxy.estimate_prompt_tokens(body)
        if ctx.endpoint == "embeddings":
            return max(1, prompt)
        overrides: Mapping[str, Any] = target.overrides if target is not None else {}
        caps = [v for k in _MAX_OUTPUT_KEYS
                if isinstance(v := overrides.get(k, body.get(k)), int) and not isinstance(v, bool) and v >= 0]
        return max(1, prompt + (min(caps) if caps else self.settings.default_max_tokens))

    def _key_specs(self, principal: proxy.Principal) -> tuple[_Spec, ...]:
        overrides = principal.settings.get("rate_limit")
        cached = self._key_cache.get(principal.name)
        if cached is not None and (cached[0] is overrides or cached[0] == overrides):
            return cached[1]
        limits = dict(self._per_key)
        if overrides is not None:
            if not isinstance(overrides, Mapping):  # fail closed: a broken key setting refuses
                raise _bad_key_settings(principal.name, "not a mapping")
            limits.update((k, v) for k, v in overrides.items() if v is not None)
        try:
            validated = Limits.model_validate(limits) if limits else None
        except ValidationError as exc:
            raise _bad_key_settings(principal.name, str(exc.errors()[0].get("msg"))) from None
        specs = _specs("key", principal.name, f"key '{principal.name}'", validated)
        if len(self._key_cache) >= _KEY_CACHE_SIZE:
            self._key_cache.clear()
        self._key_cache[principal.name] = (overrides, specs)
        return specs

    def _admitted(self, ctx: proxy.RequestContext, plan: _Plan) -> None:
        ctx.state[_STATE] = plan
        self._m_admitted.inc()

    # -- the queue ----------------------------------------------------------
    def _enqueue(self, ctx: proxy.RequestContext, plan: _Plan, blocker: _Spec, now: float) -> Awaitable[None]:
        queue = self._queue
        if len(queue) >= self.settings.queue.max_length:
            raise self._rejection(blocker, QUEUE_FULL, self.store.peek(plan.claims, now).wait)
        priority = ctx.principal.settings.get("priority", 0)
        if not isinstance(priority, (int, float)) or isinstance(priority, bool):
            priority = 0
        assert self._loop is not None
        waiter = _Waiter((-priority, next(self._seq)), ctx, plan, self._loop.create_future(), now,
                         now + self._max_wait, blocker)
        bisect.insort(queue, waiter)
        self._m_queue.set(len(queue))
        return self._wait(waiter)

    async def _wait(self, waiter: _Waiter) -> None:
        future = waiter.future
        try:
            async with asyncio.timeout_at(waiter.deadline):
                await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return  # admitted at the deadline
            self._leave(waiter)
            assert self._loop is not None
            wait = self.store.peek(waiter.plan.claims, self._loop.time()).wait
            raise self._rejection(waiter.blocker, TIMEOUT, wait) from None
        except asyncio.CancelledError:
            # The client left. If it was admitted in the same instant, proxy_finished
            # gives everything back (no attempt was made); otherwise it just leaves.
            if not future.done() or future.cancelled():
                self._leave(waiter)
            raise

    def _leave(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        self._queue.remove(waiter)
        assert self._loop is not None
        now = self._loop.time()
        self._m_wait.observe(now - waiter.enqueued)
        self._m_queue.set(len(self._queue))
        if self._queue:
            self._schedule(now)  # it may have been the one holding the others back
        else:
            self._blocked.clear()

    def _schedule(self, when: float) -> None:
        """Run :meth:`_scan` at ``when`` unless it is already due earlier."""
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_at(when, self._scan)

    def _scan(self) -> None:
        """Admit waiters in queue order; note which buckets hold the rest back."""
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        queue, store = self._queue, self.store
        blocked: dict[str, _Spec] = {}
        soonest = math.inf
        i = 0
        while i < len(queue):
            waiter = queue[i]
            if waiter.future.done() or any(s.key in blocked for s in waiter.plan.specs):
                # Cancelled (its task will remove it), or FIFO per bucket: an earlier waiter is short on one it needs.
                i += 1
                continue
            grant = store.take(waiter.plan.claims, now)
            if grant.granted:
                del queue[i]
                waiter.queued = False
                self._m_wait.observe(now - waiter.enqueued)
                self._set_headers(waiter.ctx, waiter.plan, grant.levels)
                self._admitted(waiter.ctx, waiter.plan)
                waiter.future.set_result(None)
                continue
            spec = waiter.plan.specs[grant.blocking]
            waiter.blocker = spec
            blocked[spec.key] = spec
            soonest = min(soonest, grant.wait)
            if spec.scope == "global":
                break  # every request needs the global buckets: nobody behind can go
            i += 1
        self._blocked = blocked if queue else {}
        self._m_queue.set(len(queue))
        if math.isfinite(soonest):
            self._schedule(now + soonest)

    # -- settlement ---------------------------------------------------------
    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        """Release concurrency slots, settle the token reservation, wake the queue."""
        plan: _Plan | None = ctx.state.pop(_STATE, None)
        if plan is None:
            return
        assert self._loop is not None
        now = self._loop.time()
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
        if self._queue:
            self._schedule(now)

    # -- responses ----------------------------------------------------------
    @staticmethod
    def _set_headers(ctx: proxy.RequestContext, plan: _Plan, levels: tuple[float, ...]) -> None:
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

    def _rejection(self, spec: _Spec, reason: str, wait: float) -> proxy.Rejection:
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

    def _too_large(self, spec: _Spec, reserved: int) -> proxy.Rejection:
        self._m_rejected(spec.scope, TOKENS).inc()
        return proxy.Rejection(
            429, f"Request too large for {spec.what} on tokens per min (TPM): limit {spec.burst:g}, requested "
            f"{reserved} (estimated prompt + max output tokens). Reduce the prompt or max_tokens.",
            code="rate_limit_exceeded", type="tokens", should_retry=False)


def _bad_key_settings(name: str, detail: str) -> proxy.Rejection:
    log.error("key %r has invalid rate_limit settings: %s", name, detail)
    return proxy.Rejection(500, f"the rate_limit settings of key '{name}' are invalid", code="internal_error",
                           type="server_error")


floodgate_plugin = RateLimitPlugin
