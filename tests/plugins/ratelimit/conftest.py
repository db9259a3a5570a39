"""Helpers for the rate limiter's tests: a harness around the plugin on a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

import proxy
from plugins.ratelimit import RateLimitPlugin
from plugins.ratelimit.store import BucketStore
from proxy.testing import PluginHarness


class Limiter:
    """A :class:`PluginHarness` around one :class:`RateLimitPlugin`, with shortcuts."""

    #: The plugin's estimate of the prompt of :meth:`request`: 3 (reply priming) + 4 (message) + 1 ("hi").
    HI_ESTIMATE = 8

    def __init__(self, harness: PluginHarness, plugin: RateLimitPlugin) -> None:
        self.h = harness
        self.plugin = plugin
        self.clock = harness.clock

    @staticmethod
    def key(name: str, *, priority: int = 0, **rate_limit: Any) -> proxy.Principal:
        """A principal with its own priority and per-key limits."""
        return proxy.Principal(name, proxy.KeyPolicy(priority=priority, rate_limit=rate_limit or None))

    def request(self, principal: proxy.Principal = proxy.ANONYMOUS, model: str = "deepseek-v3.2",
                **fields: Any) -> proxy.RequestContext:
        """A chat request saying "hi" (``fields``: more body fields, e.g. ``max_tokens``)."""
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
        return self.h.context(body, principal=principal)

    def passthrough(self, principal: proxy.Principal = proxy.ANONYMOUS,
                    endpoint: str = "files/file-abc") -> proxy.RequestContext:
        return self.h.context({}, endpoint=endpoint, principal=principal, kind=proxy.EndpointKind.PASSTHROUGH)

    async def admit(self, ctx: proxy.RequestContext) -> None:
        if ctx.kind is proxy.EndpointKind.PASSTHROUGH:
            await self.h.hooks.admit(ctx)  # no route: passthrough goes to the default upstream
        else:
            await self.h.admit(ctx)

    def admit_now(self, ctx: proxy.RequestContext) -> proxy.RequestContext:
        """Admitted or refused without waiting (``run_now`` fails if the admission suspends)."""
        from proxy.testing import run_now

        run_now(self.admit(ctx))
        return ctx

    def refused_now(self, ctx: proxy.RequestContext) -> proxy.Rejection:
        """Refused at once: the admission raises before it could suspend."""
        with pytest.raises(proxy.Rejection) as info:
            self.admit_now(ctx)
        return info.value

    def wait(self, ctx: proxy.RequestContext) -> asyncio.Task[None]:
        """Admission in the background (a request that queues)."""
        return self.h.spawn(self.admit(ctx))

    async def finish(self, ctx: proxy.RequestContext, *, reached: bool = True, usage: proxy.Usage | None = None,
                     duration: float = 0.0) -> None:
        """The request ends: with one upstream attempt (``usage`` as reported) unless not ``reached``."""
        if reached:
            self.h.attempt(ctx, usage=usage, duration=duration)
        await self.h.finished(ctx)
        await self.plugin.settled()  # a shared store's settlement is in
        await self.h.settle()

    async def advance(self, seconds: float) -> None:
        await self.h.advance(seconds)

    def metric(self, name: str, **labels: str) -> float:
        return self.h.metric(name, **labels)

    def levels(self, *keys: str) -> tuple[float, ...]:
        """The memory store's bucket levels now (``None``-free: missing buckets are full)."""
        buckets = self.plugin.store._buckets  # type: ignore[attr-defined]
        now = self.clock.monotonic()
        out = []
        for k in keys:
            level, updated, rate, burst = buckets[k]
            out.append(min(burst, level + (now - updated) * rate))
        return tuple(out)


LimiterFactory = Callable[..., Any]


@pytest.fixture
async def limiter() -> AsyncIterator[LimiterFactory]:
    """``await limiter({...ratelimit block...}, store=None, aliases=None)``: a started :class:`Limiter`."""
    started: list[PluginHarness] = []

    async def make(block: Mapping[str, Any], *, store: BucketStore | None = None,
                   aliases: Mapping[str, str] | None = None, clock: proxy.ManualClock | None = None) -> Limiter:
        clock = clock or proxy.ManualClock()
        plugin = RateLimitPlugin(store, clock=clock)
        harness = PluginHarness(plugin, clock=clock, settings={"ratelimit": dict(block)}, aliases=aliases)
        await harness.start()
        started.append(harness)
        return Limiter(harness, plugin)

    yield make
    for harness in started:
        await harness.stop()
