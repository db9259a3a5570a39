""":class:`Coalescer`: what a store is asked during one turn of the event loop, as one call.

A store's script takes many items (admissions, settlements) in one call. Items added
while the event loop runs its current callbacks — the requests it is handling now —
go out together when that turn ends: one script call for all of them, at once, so no
item waits for an earlier call's reply. On :attr:`proxy.SharedState.pipe` the calls
of every store in that turn share one write, so a request's admission is one round
trip however many plugins ask Redis for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["Coalescer"]

log = logging.getLogger("floodgate.state")

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Items added in one turn of the event loop, sent at its end by one call.

    :param call: makes the call for a batch: a future or coroutine of its reply.
    :param answer: gives every item of the batch its share of the reply.
    :param fail: fails every item of the batch with the call's error (the store reports it).
    """

    def __init__(self, call: Callable[[list[T]], Awaitable[Any]], answer: Callable[[list[T], Any], None],
                 fail: Callable[[list[T], Exception], None]) -> None:
        self._call = call
        self._answer = answer
        self._fail = fail
        self._pending: list[T] = []
        self._flush: asyncio.Handle | None = None
        self._sent: set[asyncio.Future[Any]] = set()

    def add(self, item: T) -> None:
        self._pending.append(item)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._flush = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            reply = asyncio.ensure_future(self._call(batch))
        except Exception as exc:
            self._fail(batch, exc)
            return
        self._sent.add(reply)
        reply.add_done_callback(lambda done: self._answered(batch, done))

    def _answered(self, batch: list[T], done: asyncio.Future[Any]) -> None:
        self._sent.discard(done)
        if done.cancelled():
            self._fail(batch, ConnectionError("the store was closed"))
            return
        exc = done.exception()
        if exc is not None:
            self._fail(batch, exc if isinstance(exc, Exception) else ConnectionError(repr(exc)))
            return
        try:
            self._answer(batch, done.result())
        except Exception as error:  # a bug: nobody may wait for ever
            log.exception("shared state: a reply could not be handed out")
            self._fail(batch, error)

    async def close(self) -> list[T]:
        """Stop: calls on their way are cancelled (their items fail); the items not sent are returned."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for reply in list(self._sent):
            reply.cancel()
            with contextlib.suppress(BaseException):
                await reply
        left, self._pending = self._pending, []
        return left
