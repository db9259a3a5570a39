"""The typed facade over the plugin manager: one method per hook.

Pluggy calls implementations but does not await them, and its ``firstresult``
would take a coroutine object for a result. :class:`Hooks` resolves, once at
start-up, each hook's implementations in pluggy's call order (so ``tryfirst``
and ``trylast`` keep their meaning), remembers which are coroutine functions,
and calls each hook by the mode its spec declares (:data:`proxy.hookspecs.MODES`).
A misspelled hook is an attribute error (and a type-checking error), never a
silent ``None``. A hook nobody implements costs nothing: the gateway asks
:meth:`Hooks.implemented` once and skips it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import pluggy

from . import hookspecs
from .deferred import Deferred
from .errors import ConfigError, ConfigErrors, Rejection
from .hookspecs import MODES
from .types import (
    Attempt,
    AttemptRecord,
    Principal,
    Reply,
    RequestContext,
    Route,
    Stop,
    StreamChunk,
    Target,
    UpstreamResponse,
)

if TYPE_CHECKING:
    import argparse

    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from .config import Config, UpstreamSettings
    from .state import SharedState

log = logging.getLogger("floodgate.hooks")

_CTX_ONLY: Final = ("ctx",)  # most per-request hooks: called without building an argument list


class _Impl:
    """One implementation, resolved once: its plugin, function, argument names, asyncness."""

    __slots__ = ("plugin", "fn", "argnames", "is_async", "ctx_only")

    def __init__(self, impl: pluggy.HookImpl) -> None:
        self.plugin = impl.plugin_name
        self.fn: Callable[..., Any] = impl.function
        self.argnames = tuple(impl.argnames)
        self.is_async = inspect.iscoroutinefunction(impl.function)
        self.ctx_only = self.argnames == _CTX_ONLY


def sync_only_violations(pm: pluggy.PluginManager) -> list[ConfigError]:
    """An ``async def`` (or async generator) implementing a hook that is called synchronously.

    Such an implementation would silently never run (its coroutine is created and
    dropped), so start-up refuses it, naming the plugin and the hook.
    """
    errors = []
    for name, declared in MODES.items():
        if declared.may_be_async:
            continue
        for impl in getattr(pm.hook, name).get_hookimpls():
            fn = impl.function
            if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                errors.append(ConfigError("plugins", f"plugin {impl.plugin_name!r}: {name} is called "
                                          "synchronously and must be a plain function, not async def"))
    return errors


class Hooks:
    """Every hook as a typed method, called by its declared mode."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._impls: dict[str, tuple[_Impl, ...]] = {
            # pluggy calls the last registered first: reverse its list.
            name: tuple(_Impl(i) for i in reversed(getattr(pm.hook, name).get_hookimpls()))
            for name in MODES
        }

    def implemented(self, hook: Callable[..., Any]) -> bool:
        """Whether some plugin implements ``hook`` (a spec function from :mod:`proxy.hookspecs`)."""
        return bool(self._impls[hook.__name__])

    def implementations(self, hook: Callable[..., Any]) -> tuple[str, ...]:
        """The plugins implementing ``hook``, in call order."""
        return tuple(impl.plugin for impl in self._impls[hook.__name__])

    # -- the three modes --------------------------------------------------------
    async def _first(self, name: str, kwargs: dict[str, Any]) -> Any:
        for impl in self._impls[name]:
            result = impl.fn(kwargs["ctx"]) if impl.ctx_only else impl.fn(*[kwargs[a] for a in impl.argnames])
            if impl.is_async or (result is not None and inspect.isawaitable(result)):
                result = await result
            if result is not None:
                return result
        return None

    async def _all(self, name: str, kwargs: dict[str, Any]) -> list[Any]:
        results = []
        for impl in self._impls[name]:
            result = impl.fn(kwargs["ctx"]) if impl.ctx_only else impl.fn(*[kwargs[a] for a in impl.argnames])
            if impl.is_async or (result is not None and inspect.isawaitable(result)):
                result = await result
            if result is not None:
                results.append(result)
        return results

    def _all_sync(self, name: str, kwargs: dict[str, Any]) -> list[Any]:
        results = []
        for impl in self._impls[name]:
            result = impl.fn(*[kwargs[a] for a in impl.argnames])
            if result is not None:
                results.append(result)
        return results

    def _first_sync(self, name: str, kwargs: dict[str, Any]) -> Any:
        for impl in self._impls[name]:
            result = impl.fn(*[kwargs[a] for a in impl.argnames])
            if result is not None:
                return result
        return None

    async def _observe(self, name: str, kwargs: dict[str, Any]) -> None:
        for impl in self._impls[name]:
            try:
                result = impl.fn(kwargs["ctx"]) if impl.ctx_only else impl.fn(*[kwargs[a] for a in impl.argnames])
                if impl.is_async or (result is not None and inspect.isawaitable(result)):
                    await result
            except Exception:
                log.exception("plugin %r failed in %s", impl.plugin, name)

    def _observe_sync(self, name: str, kwargs: dict[str, Any]) -> None:
        for impl in self._impls[name]:
            try:
                impl.fn(*[kwargs[a] for a in impl.argnames])
            except Exception:
                log.exception("plugin %r failed in %s", impl.plugin, name)

    @staticmethod
    def _checked(name: str, result: Any, expected: type | tuple[type, ...]) -> Any:
        """A first-result hook must answer with its declared type: anything else is a bug
        in a plugin, refused (fail closed) with a message naming the hook."""
        if result is not None and not isinstance(result, expected):
            raise TypeError(f"{name} returned {type(result).__name__}, not {expected}")
        return result

    # -- start-up -----------------------------------------------------------------
    def configure(self, config: Config, registry: CollectorRegistry,
                  state: SharedState | None = None) -> list[ConfigError]:
        """Run every ``proxy_configure``; return all their errors (none stops the others).

        Without ``state`` the plugins get a fresh in-memory :class:`SharedState`.
        """
        if state is None:
            from .state import SharedState

            state = SharedState()
        errors: list[ConfigError] = []
        kwargs = {"config": config, "registry": registry, "state": state}
        for impl in self._impls["proxy_configure"]:
            try:
                impl.fn(*[kwargs[a] for a in impl.argnames])
            except ConfigErrors as exc:
                errors.extend(exc.errors)
            except ConfigError as exc:
                errors.append(exc)
        return errors

    def route_names(self, config: Config) -> set[str]:
        names: set[str] = set()
        for result in self._all_sync("proxy_route_names", {"config": config}):
            names.update(result)
        return names

    def add_routes(self, app: web.Application) -> None:
        self._all_sync("proxy_add_routes", {"app": app})

    def add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        self._all_sync("proxy_add_commands", {"subparsers": subparsers})

    async def builtin_upstream(self, name: str, settings: UpstreamSettings) -> str | None:
        result = await self._first("proxy_builtin_upstream", {"name": name, "settings": settings})
        return self._checked("proxy_builtin_upstream", result, str)

    async def startup(self, app: web.Application) -> None:
        await self._all("proxy_startup", {"app": app})

    async def shutdown(self, app: web.Application) -> None:
        await self._observe("proxy_shutdown", {"app": app})

    # -- per request, in order ------------------------------------------------------
    async def authenticate(self, ctx: RequestContext) -> Principal:
        result = await self._first("proxy_authenticate", {"ctx": ctx})
        return self._checked("proxy_authenticate", result, Principal)

    async def authorize(self, ctx: RequestContext) -> None:
        await self._all("proxy_authorize", {"ctx": ctx})

    async def short_circuit(self, ctx: RequestContext) -> Reply | None:
        result = await self._first("proxy_short_circuit", {"ctx": ctx})
        return self._checked("proxy_short_circuit", result, Reply)

    async def route(self, ctx: RequestContext) -> Route:
        result = await self._first("proxy_route", {"ctx": ctx})
        return self._checked("proxy_route", result, Route)

    async def preview_route(self, ctx: RequestContext, model: str | None = None) -> Route | None:
        """The route ``ctx`` would get — asking for ``model`` instead of its own, if given — asked
        on a copy marked ``preview`` (nothing is recorded).

        For plugins that must know what routing would decide without routing: the FAQ
        prices the model an answer saved; the degrade plugin finds the route a request
        would have taken, or the cheaper route it may move it to. A rejection means no route.
        """
        probe = dataclasses.replace(ctx, state={}, response_headers={}, attempts=[], degraded=[], preview=True,
                                    model=ctx.model if model is None else model)
        try:
            return await self.route(probe)
        except Rejection:
            return None

    async def admit(self, ctx: RequestContext) -> None:
        """Every ``proxy_admit`` in order; a :class:`~proxy.deferred.Deferred` one is awaited after the
        rest have run, so their shared-state calls share a round trip (see :mod:`proxy.deferred`)."""
        deferred: list[Any] = []
        try:
            for impl in self._impls["proxy_admit"]:
                result = impl.fn(ctx) if impl.ctx_only else impl.fn()
                if result is None:
                    continue
                if isinstance(result, Deferred):
                    deferred.append(result.awaitable)
                elif impl.is_async or inspect.isawaitable(result):
                    await result
            while deferred:  # in order, in this task (no task per decision): the first refusal wins
                await deferred.pop(0)
        except BaseException:
            if deferred:
                await _abandon(deferred)
            raise

    async def predicted_wait(self, ctx: RequestContext, route: Route) -> float | None:
        """The longest wait any plugin predicts for ``ctx`` on ``route``; ``None``: nobody limits it."""
        waits = await self._all("proxy_predicted_wait", {"ctx": ctx, "route": route})
        return max(waits) if waits else None

    def unavailable(self, ctx: RequestContext, target: Target) -> str | None:
        result = self._first_sync("proxy_unavailable", {"ctx": ctx, "target": target})
        return self._checked("proxy_unavailable", result, str)

    async def next_attempt(self, ctx: RequestContext) -> Attempt | Stop | None:
        result = await self._first("proxy_next_attempt", {"ctx": ctx})
        return self._checked("proxy_next_attempt", result, (Attempt, Stop))

    async def hedge(self, ctx: RequestContext, attempt: AttemptRecord) -> Attempt | None:
        result = await self._first("proxy_hedge", {"ctx": ctx, "attempt": attempt})
        return self._checked("proxy_hedge", result, Attempt)

    def overloaded(self, ctx: RequestContext) -> str | None:
        result = self._first_sync("proxy_overloaded", {"ctx": ctx})
        return self._checked("proxy_overloaded", result, str)

    def attempt_started(self, ctx: RequestContext, attempt: AttemptRecord) -> None:
        self._observe_sync("proxy_attempt_started", {"ctx": ctx, "attempt": attempt})

    def attempt_result(self, ctx: RequestContext, attempt: AttemptRecord) -> None:
        self._observe_sync("proxy_attempt_result", {"ctx": ctx, "attempt": attempt})

    async def response(self, ctx: RequestContext, response: UpstreamResponse) -> None:
        await self._all("proxy_response", {"ctx": ctx, "response": response})

    def stream_chunk(self, ctx: RequestContext, chunk: StreamChunk) -> None:
        self._all_sync("proxy_stream_chunk", {"ctx": ctx, "chunk": chunk})

    async def status(self) -> dict[str, Any]:
        """Every plugin's part of the live status, merged key by key."""
        merged: dict[str, Any] = {}
        for part in await self._all("proxy_status", {}):
            if not isinstance(part, dict):
                raise TypeError(f"proxy_status returned {type(part).__name__}, not dict")
            _merge(merged, part)
        return merged

    async def finished(self, ctx: RequestContext) -> None:
        await self._observe("proxy_finished", {"ctx": ctx})


async def _abandon(decisions: list[Any]) -> None:
    """Deferred decisions not awaited (the request was refused, or its client left): each runs to its
    first wait (its store's reply, a queue) and is cancelled there, so it gives back what it was granted."""
    tasks = [asyncio.ensure_future(decision) for decision in decisions]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Merge ``part`` into ``into``: mappings recursively, any other value replaces."""
    for key, value in part.items():
        existing = into.get(key)
        if isinstance(existing, dict) and isinstance(value, dict):
            _merge(existing, value)
        else:
            into[key] = value


def _facade_covers_every_hook() -> None:
    """Import-time check: a hook added to the specs without a facade method is a bug."""
    missing = [n for n in MODES if not hasattr(Hooks, n.removeprefix("proxy_"))]
    if missing or set(MODES) != {n for n in dir(hookspecs) if n.startswith("proxy_")}:
        raise RuntimeError(f"hooks without a facade method or declared mode: {missing}")


_facade_covers_every_hook()
