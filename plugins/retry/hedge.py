"""The hedging policy: which attempts may be hedged, after how long, and how often.

A target opts in by model (``hedge.models``) or by route (``hedge.routes``). Its
attempts carry ``hedge_after``: ``hedge.after_ms``, or with ``p95`` the 95th
percentile of the model's recent times to the first meaningful event (the last
:data:`WINDOW` samples, streams and non-streams apart; re-sorted every
:data:`RESORT_EVERY` samples, so it costs a deque append per attempt). Until
``min_samples`` are in, ``p95`` hedges nothing.

The extra load is capped by ``max_ratio``: each request to an opted-in model earns
that model ``max_ratio`` of a hedge, each hedge spends one, and at most the
hedges of :data:`SAVED_REQUESTS` requests can be saved up (a burst after a quiet
period stays small) — so hedges never exceed ``max_ratio`` × requests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

import proxy

from .settings import HedgeSettings

__all__ = ["RESORT_EVERY", "SAVED_REQUESTS", "WINDOW", "HedgePolicy", "LatencyWindow"]

WINDOW = 200
RESORT_EVERY = 20
SAVED_REQUESTS = 100
_ONE = 1.0 - 1e-9  # ten tenths make one hedge, whatever the float sum says


class LatencyWindow:
    """The last :data:`WINDOW` samples of one model and its cached 95th percentile."""

    __slots__ = ("samples", "_fresh", "_p95")

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=WINDOW)
        self._fresh = 0
        self._p95: float | None = None

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self._fresh += 1

    def p95(self, min_samples: int) -> float | None:
        if len(self.samples) < min_samples:
            return None
        if self._p95 is None or self._fresh >= RESORT_EVERY:
            ordered = sorted(self.samples)
            self._p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            self._fresh = 0
        return self._p95


class HedgePolicy:
    """When an attempt may be hedged and whether a hedge may be sent now."""

    def __init__(self, settings: HedgeSettings, registry: CollectorRegistry,
                 entry_of: Callable[[str], str | None] = lambda model: model) -> None:
        """:param entry_of: the catalogue entry serving a model: budgets, latency windows and
            opt-ins are kept per entry (a pattern's names share them: bounded state)."""
        self.settings = settings
        self.entry_of = entry_of
        self.models = frozenset(settings.models)
        self.routes = frozenset(settings.routes)
        self.enabled = bool(self.models or self.routes)
        self.windows: dict[tuple[str, bool], LatencyWindow] = {}
        self.credits: dict[str, float] = {}
        self.credit_cap = max(1.0, SAVED_REQUESTS * settings.max_ratio)
        self.skipped = proxy.LabelCache(Counter(
            "floodgate_retry_hedges_skipped", "Slow attempts not hedged, by reason "
            "(budget: max_ratio spent; no_target: nothing to send)", ["model", "reason"], registry=registry))

    def opted_in(self, ctx: proxy.RequestContext, target: proxy.Target) -> bool:
        route = ctx.route
        return self.entry_of(target.model) in self.models or (route is not None and route.name in self.routes)

    def earn(self, model: str) -> None:
        """A request to an opted-in model: it earns ``max_ratio`` of a hedge."""
        model = self.entry_of(model) or model
        self.credits[model] = min(self.credit_cap, self.credits.get(model, 0.0) + self.settings.max_ratio)

    def after(self, model: str, stream: bool) -> float | None:
        """Seconds before an attempt on ``model`` is hedged, or ``None`` (not now)."""
        settings = self.settings
        if not isinstance(settings.after_ms, float):  # "p95"
            window = self.windows.get((self.entry_of(model) or model, stream))
            p95 = window.p95(settings.min_samples) if window is not None else None
            if p95 is None:
                return None
            return max(p95, settings.min_after_ms / 1000)
        return settings.after_ms / 1000

    def spend(self, model: str) -> bool:
        """Take one hedge from ``model``'s budget."""
        model = self.entry_of(model) or model
        credit = self.credits.get(model, 0.0)
        if credit < _ONE:
            self.skipped(model, "budget").inc()
            return False
        self.credits[model] = credit - 1.0
        return True

    def observe(self, ctx: proxy.RequestContext) -> None:
        """Feed the times to the first meaningful event of a finished request's attempts."""
        for record in ctx.attempts:
            seconds = record.time_to_first_event
            if seconds is not None and record.error != "cancelled":
                key = (self.entry_of(record.target.model) or record.target.model, ctx.stream)
                window = self.windows.get(key)
                if window is None:
                    window = self.windows[key] = LatencyWindow()
                window.add(seconds)
