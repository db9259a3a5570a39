"""The event loop a server process runs on: uvloop where it is installed, else asyncio's.

uvloop (``pip install 'floodgate[fast]'``) runs the same aiohttp code with a
libuv loop written in Cython: less CPU per request for the loop's own work
(transports, timers, callbacks). ``server.event_loop`` chooses: ``auto`` (uvloop
when importable), ``asyncio`` or ``uvloop`` (an error when it is not installed).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]
T = TypeVar("T")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """``auto`` resolved to the loop it means here: ``uvloop`` or ``asyncio``."""
    if choice == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    if choice == "uvloop" and not uvloop_installed():
        raise RuntimeError("server.event_loop: uvloop is not installed (pip install 'floodgate[fast]')")
    return choice


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A new-loop factory for ``choice`` (``None``: asyncio's default)."""
    if resolve(choice) == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    return None


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
