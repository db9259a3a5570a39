"""An offline harness for plugins: their hooks driven directly, time from a clock the test moves.

In the spirit of mitmproxy's ``taddons``: no sockets, no sleeps. Rate limits,
queues, breakers, budgets and retry decisions depend on time; give the plugin
the harness's :class:`proxy.ManualClock` and move it with :meth:`advance`::

    clock = ManualClock()
    h = PluginHarness(RateLimitPlugin(clock=clock), clock=clock,
                      settings={"ratelimit": {"global": {"requests_per_second": 1, "burst": 1}}})
    await h.start()
    h.admit_now(h.context())                  # admitted without waiting
    waiting = h.spawn(h.admit(h.context()))   # the second one queues...
    await h.advance(1.0)                      # ...and is admitted when the bucket refills
    assert waiting.done()
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any, TypeVar

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry

from ..clock import ManualClock
from ..config import Config, config_from_dict
from ..defaults import CoreDefaults
from ..errors import ConfigErrors
from ..hooks import Hooks
from ..keys import CONFIG, HOOKS, REGISTRY, STATE
from ..loader import build_plugin_manager
from ..state import SharedState
from ..types import ANONYMOUS, AttemptRecord, EndpointKind, Principal, RequestContext, Target, Usage
from .fixtures import mock_config

T = TypeVar("T")

#: A chat body every plugin accepts.
DEFAULT_BODY: Mapping[str, Any] = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


def run_now(awaitable: Awaitable[Any] | Any) -> Any:
    """The result of an awaitable that must not wait (or a plain value, as sync hooks give).

    Raises :class:`AssertionError` if it suspends: "answered at once" is then a
    fact about the code path, not a wall-clock measurement.
    """
    if not inspect.isawaitable(awaitable):
        return awaitable
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value
    steps.close()
    raise AssertionError("it waited instead of answering at once")


class PluginHarness:
    """Plugins configured as in a gateway, their hooks called one by one.

    :param plugins: plugin objects (construct them with ``clock=harness_clock``
        where they take one).
    :param settings: ``plugins.<name>`` blocks; or pass a whole ``config``.
    :param clock: the clock the test advances (a fresh :class:`ManualClock` if omitted).
    :param state: the :class:`proxy.SharedState` the plugins get (a fresh in-memory one if
        omitted). Pass one on Redis to test a plugin's shared stores: :meth:`start` starts it
        (if it is not yet), the test closes it. Two harnesses given the same state stand for
        two generations of one gateway (a configuration reload): what the plugins keep with
        ``state.keep`` carries over.
    """

    def __init__(self, *plugins: Any, settings: Mapping[str, Any] | None = None,
                 models: Mapping[str, Mapping[str, Any]] | None = None, aliases: Mapping[str, str] | None = None,
                 config: Config | Mapping[str, Any] | None = None, clock: ManualClock | None = None,
                 state: SharedState | None = None) -> None:
        self.clock = clock or ManualClock()
        self.state = state if state is not None else SharedState()
        if config is None:
            config = mock_config("http://upstream.invalid/v1", plugin_settings=settings, models=models,
                                 aliases=aliases)
        self.config = config if isinstance(config, Config) else config_from_dict(config, source="<harness>")
        self.registry = CollectorRegistry()
        self.state.bind_metrics(self.registry)  # floodgate_state_degraded, as in a gateway
        pm, _, errors = build_plugin_manager(core=[CoreDefaults()], builtins=(), entry_points=False, extra=plugins)
        self.hooks = Hooks(pm)
        errors = [*errors, *self.hooks.configure(self.config, self.registry, self.state)]
        if errors:
            raise ConfigErrors([self.config.locate(e) for e in errors])
        self.config.check_aliases(self.hooks.route_names(self.config))
        self.app = web.Application()
        self.app[CONFIG] = self.config
        self.app[HOOKS] = self.hooks
        self.app[REGISTRY] = self.registry
        self.app[STATE] = self.state
        self._tasks: list[asyncio.Task[Any]] = []
        self._ids = 0

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> PluginHarness:
        await self.state.start()  # a Redis state's pool opens before any plugin starts (as in a gateway)
        await self.hooks.startup(self.app)
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.hooks.shutdown(self.app)

    async def __aenter__(self) -> PluginHarness:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- requests -----------------------------------------------------------------
    def context(self, body: Mapping[str, Any] | None = None, *, endpoint: str = "chat/completions",
                principal: Principal = ANONYMOUS, headers: Mapping[str, str] | None = None,
                kind: EndpointKind = EndpointKind.MODEL) -> RequestContext:
        """A request as the core would have parsed it."""
        import orjson

        body = dict(DEFAULT_BODY if body is None else body)
        self._ids += 1
        model = body.get("model")
        return RequestContext(
            request_id=f"req-{self._ids}", method="POST", endpoint=endpoint,
            headers=CIMultiDictProxy(CIMultiDict(headers or {})), config=self.config, body=body,
            raw=orjson.dumps(body), model=model if isinstance(model, str) else None,
            stream=body.get("stream") is True, principal=principal, kind=kind)

    async def authenticate(self, ctx: RequestContext) -> RequestContext:
        ctx.principal = await self.hooks.authenticate(ctx)
        return ctx

    async def route(self, ctx: RequestContext) -> RequestContext:
        ctx.route = await self.hooks.route(ctx)
        return ctx

    async def admit(self, ctx: RequestContext) -> None:
        """Route (if not yet) and run every ``proxy_admit``; may wait (see :meth:`spawn`)."""
        if ctx.route is None:
            await self.route(ctx)
        await self.hooks.admit(ctx)

    def admit_now(self, ctx: RequestContext) -> None:
        """:meth:`admit`, which must decide without waiting (admitted or refused at once)."""
        run_now(self.admit(ctx))

    def attempt(self, ctx: RequestContext, *, target: Target | None = None, status: int | None = 200,
                error: str | None = None, duration: float = 0.0, usage: Usage | None = None,
                retry_after: float | None = None) -> AttemptRecord:
        """Record the outcome of one upstream try, as the core would (times from the clock)."""
        if target is None:
            target = ctx.route.targets[len(ctx.attempts) % len(ctx.route.targets)] if ctx.route else \
                self.config.target(ctx.model or "gpt-4.1")
        started = self.clock.monotonic() - duration
        record = AttemptRecord(target, started=started, ended=started + duration, status=status, error=error,
                               retry_after=retry_after)
        ctx.attempts.append(record)
        ctx.timings.upstream += duration
        if error is None:
            ctx.status = status or 200
            ctx.usage = usage or Usage(10, 5)
        else:
            ctx.status = status or 502
        return record

    async def next_attempt(self, ctx: RequestContext) -> Any:
        return await self.hooks.next_attempt(ctx)

    async def finished(self, ctx: RequestContext) -> None:
        await self.hooks.finished(ctx)

    # -- time ---------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` in the background (a request that waits); cancelled at :meth:`stop`."""
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        return task

    async def settle(self) -> None:
        """Let every task that can run now run (woken waiters resume)."""
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move the clock, fire what fell due, and let woken tasks run."""
        await self.settle()
        self.clock.advance(seconds)
        await self.settle()

    # -- metrics ------------------------------------------------------------------
    def metric(self, name: str, **labels: str) -> float:
        """A sample of the plugins' metrics (0 when absent)."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value
