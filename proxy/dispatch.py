"""The async-aware hook dispatcher.

Pluggy calls implementations but does not await them, and its ``firstresult``
would take a coroutine object for a result. :class:`Hooks` resolves, once at
start-up, each hook's implementations in pluggy's call order (so ``tryfirst`` and
``trylast`` keep their meaning), remembers which are coroutine functions, and
offers :meth:`first_result` and :meth:`call_all`. A hook that nobody implements
is an empty tuple: :meth:`implemented` lets the hot path skip it entirely.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import pluggy

log = logging.getLogger("floodgate.hooks")

_CTX_ONLY = ("ctx",)  # most per-request hooks: call without building an argument list
# (plugin name, function, positional argument names, is coroutine function)
_Impl = tuple[str, Callable[..., Any], tuple[str, ...], bool]


class Hooks:
    """A typed facade over ``pm.hook`` that awaits async implementations."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self._impls: dict[str, tuple[_Impl, ...]] = {}
        for name in dir(pm.hook):
            caller = getattr(pm.hook, name)
            if name.startswith("proxy_") and isinstance(caller, pluggy.HookCaller):
                # pluggy calls the last registered first: reverse its list.
                impls = reversed(caller.get_hookimpls())
                self._impls[name] = tuple(
                    (impl.plugin_name, impl.function, tuple(impl.argnames),
                     inspect.iscoroutinefunction(impl.function))
                    for impl in impls
                )

    def implemented(self, name: str) -> bool:
        return bool(self._impls.get(name))

    def implementations(self, name: str) -> tuple[str, ...]:
        """Plugin names implementing ``name``, in call order."""
        return tuple(impl[0] for impl in self._impls.get(name, ()))

    async def first_result(self, name: str, /, **kwargs: Any) -> Any:
        """Call implementations in order until one returns something other than ``None``."""
        for _plugin, fn, argnames, is_async in self._impls.get(name, ()):
            result = fn(kwargs["ctx"]) if argnames == _CTX_ONLY else fn(*[kwargs[a] for a in argnames])
            if is_async or (result is not None and inspect.isawaitable(result)):
                result = await result
            if result is not None:
                return result
        return None

    async def call_all(self, name: str, /, **kwargs: Any) -> None:
        """Call every implementation in order; exceptions propagate (fail closed)."""
        for _plugin, fn, argnames, is_async in self._impls.get(name, ()):
            result = fn(kwargs["ctx"]) if argnames == _CTX_ONLY else fn(*[kwargs[a] for a in argnames])
            if is_async or (result is not None and inspect.isawaitable(result)):
                await result

    def call_all_sync(self, name: str, /, **kwargs: Any) -> None:
        """Call every implementation of a synchronous-only hook (``proxy_stream_chunk``)."""
        for _plugin, fn, argnames, _ in self._impls.get(name, ()):
            fn(*[kwargs[a] for a in argnames])

    async def observe(self, name: str, /, **kwargs: Any) -> None:
        """Call every implementation; log and swallow exceptions (observers fail open)."""
        for plugin, fn, argnames, is_async in self._impls.get(name, ()):
            try:
                result = fn(kwargs["ctx"]) if argnames == _CTX_ONLY else fn(*[kwargs[a] for a in argnames])
                if is_async or (result is not None and inspect.isawaitable(result)):
                    await result
            except Exception:
                log.exception("plugin %r failed in %s", plugin, name)
