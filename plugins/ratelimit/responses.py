"""What clients see of the limiter: OpenAI's ``x-ratelimit-*`` headers and the 429s."""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

import proxy

from .plan import CONCURRENCY, REQUESTS, TOKENS, Plan, Spec
from .settings import QueueSettings

__all__ = ["QUEUE_FULL", "TIMEOUT", "Rejections", "format_duration", "set_headers"]

#: Reasons of a refusal by the queue (the ``reason`` label of the rejection metric; the
#: other reasons are the kind of the bucket that was short).
QUEUE_FULL, TIMEOUT = "queue_full", "timeout"


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


def set_headers(ctx: proxy.RequestContext, plan: Plan, levels: Sequence[float]) -> None:
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


class Rejections:
    """The 429s, counted by the scope of the short bucket and the reason."""

    def __init__(self, queue: QueueSettings, registry: CollectorRegistry) -> None:
        self.queue = queue
        self._counter = proxy.LabelCache(Counter(
            "floodgate_ratelimit_rejected", "Requests refused with 429, by the scope of the bucket that was "
            "short and the reason", ["scope", "reason"], registry=registry))

    def __call__(self, spec: Spec, reason: str, wait: float) -> proxy.Rejection:
        """Refused for lack of ``spec``; ``wait``: seconds until it may succeed (``retry-after``)."""
        self._counter(spec.scope, reason).inc()
        retry = wait if 0 < wait < math.inf else 1.0
        again = f"Please try again in {format_duration(retry)}."
        if reason == QUEUE_FULL:
            message = (f"Rate limit reached for {spec.what} and the waiting queue is full "
                       f"({self.queue.max_length} requests). {again}")
        elif reason == TIMEOUT:
            message = (f"Rate limit reached for {spec.what}: not admitted within "
                       f"{self.queue.max_wait_ms:g} ms. {again}")
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

    def too_large(self, spec: Spec, reserved: int) -> proxy.Rejection:
        """A reservation no bucket of ``spec``'s size can ever hold: refused for good."""
        self._counter(spec.scope, TOKENS).inc()
        return proxy.Rejection(
            429, f"Request too large for {spec.what} on tokens per min (TPM): limit {spec.burst:g}, requested "
            f"{reserved} (estimated prompt + max output tokens). Reduce the prompt or max_tokens.",
            code="rate_limit_exceeded", type="tokens", should_retry=False)
