"""Futures passed on by callbacks instead of tasks: the hot path's answers from Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["relay"]


def relay(source: asyncio.Future[Any], target: asyncio.Future[Any],
          fn: Callable[[Any], Any] | None = None) -> None:
    """When ``source`` is done, ``target`` gets its outcome (its result through ``fn``, if given; an
    error ``fn`` raises goes to ``target``). A target already done (cancelled) is left alone."""

    def done(_: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if source.cancelled():
            target.cancel()
        elif (exc := source.exception()) is not None:
            target.set_exception(exc)
        else:
            try:
                target.set_result(source.result() if fn is None else fn(source.result()))
            except Exception as error:
                target.set_exception(error)

    source.add_done_callback(done)

