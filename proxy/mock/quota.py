"""The mock as a provider under quota: per API key, requests and tokens per minute, a true
capacity, and latency rising with load.

Like OpenAI (and the providers that copy it), every answer to a key under quota carries
``x-ratelimit-limit-{requests,tokens}``, ``x-ratelimit-remaining-{requests,tokens}`` and
``x-ratelimit-reset-{requests,tokens}``; a request past a limit gets 429
``rate_limit_exceeded`` with ``retry-after`` (seconds) and ``retry-after-ms``. Requests and
tokens are token buckets of a minute's quota refilled over the minute; a request takes one
request and its prompt plus the answer it will get in tokens. ``capacity`` is the
provider's real concurrency, which its documents (and the gateway's config) need not
know: a request beyond it is refused with 429 too (its headers then show quota left, so
it is an overload, not a quota). ``load_latency_ms`` delays the first token by that many
milliseconds per request already in flight on the key: latency rises with load, as a
provider's does when its queue builds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = ["KeyQuota", "Quota"]


@dataclass
class Quota:
    """One key's limits (``None``: no limit of that kind)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    capacity: int | None = None  # requests in flight it takes; more are refused (429)
    load_latency_ms: float = 0.0  # first-token delay added per request already in flight
    overload_retry_after: float = 1.0  # retry-after (seconds) of a refusal past capacity

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "capacity"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.load_latency_ms < 0 or self.overload_retry_after < 0:
            raise ValueError("load_latency_ms and overload_retry_after must be >= 0")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``1.5s``, ``6m0s``."""
    ms = math.ceil(seconds * 1000) if seconds > 0 else 0
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest // 1000}s" if rest % 1000 == 0 else f"{rest / 1000:g}s"
    return f"{minutes}m{secs}" if minutes else secs


class _Bucket:
    __slots__ = ("burst", "rate", "level", "updated")

    def __init__(self, per_minute: float, now: float) -> None:
        self.burst = per_minute
        self.rate = per_minute / 60.0
        self.level = per_minute
        self.updated = now

    def refill(self, now: float) -> float:
        self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.updated = now
        return self.level

    def wait(self, amount: float) -> float:
        return max(0.0, (min(amount, self.burst) - self.level) / self.rate)


class KeyQuota:
    """The live state of one key's quota; ``clock`` is monotonic seconds."""

    def __init__(self, quota: Quota, clock: Callable[[], float] = time.monotonic) -> None:
        self.quota = quota
        self._now = clock
        now = clock()
        self.requests = _Bucket(quota.requests_per_minute, now) if quota.requests_per_minute else None
        self.tokens = _Bucket(quota.tokens_per_minute, now) if quota.tokens_per_minute else None
        self.in_flight = 0
        self.max_in_flight = 0
        self.admitted = 0
        self.throttled = 0

    def admit(self, tokens: float) -> tuple[float | None, dict[str, str]]:
        """Take one request of ``tokens``: ``(None, headers)`` if admitted (it is then in flight
        until :meth:`done`), else ``(retry_after, headers)``."""
        now = self._now()
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)
        wait = 0.0
        if self.requests is not None and self.requests.level < 1:
            wait = self.requests.wait(1)
        if self.tokens is not None and self.tokens.level < tokens:
            wait = max(wait, self.tokens.wait(tokens))
        capacity = self.quota.capacity
        if wait <= 0 and capacity is not None and self.in_flight >= capacity:
            wait = self.quota.overload_retry_after
        elif wait <= 0:
            if self.requests is not None:
                self.requests.level -= 1
            if self.tokens is not None:
                self.tokens.level -= tokens
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.admitted += 1
            return None, self.headers()
        self.throttled += 1
        headers = self.headers()
        headers["retry-after"] = f"{max(wait, 0.001):.3f}".rstrip("0").rstrip(".")
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return wait, headers

    def done(self) -> None:
        self.in_flight -= 1

    def extra_latency(self) -> float:
        """Seconds of first-token delay for a request admitted now (the others in flight)."""
        return self.quota.load_latency_ms * max(0, self.in_flight - 1) / 1000.0

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            out[f"x-ratelimit-limit-{kind}"] = str(int(bucket.burst))
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
            out[f"x-ratelimit-reset-{kind}"] = _duration((bucket.burst - bucket.level) / bucket.rate)
        return out

    def stats(self) -> dict[str, object]:
        return {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight, "admitted": self.admitted,
                "throttled": self.throttled, **self.quota.to_dict()}
