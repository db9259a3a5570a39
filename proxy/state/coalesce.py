""":class:`Coalescer`: what a store is asked during one turn of the event loop, as one call.

A store's script takes many items (admissions, settlements) in one call. Items added
while the event loop runs its current callbacks — the requests it is handling now —
go out together when that turn ends: one script call for all of them. On
:attr:`proxy.SharedState.pipe` the calls of every store share the pipe's write, so a
request's admission is one round trip however many plugins ask Redis for it; and
while a write is on its way the items keep gathering until its replies are in, so a
busy worker sends few large calls (fewer system calls for it and for Redis).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from .pipe import Pipe

__all__ = ["Coalescer"]

log = logging.getLogger("floodgate.state")

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Items added in one turn of the event loop, sent at its end by one call.

    :param call: makes the call for a batch: a future or coroutine of its reply.
    :param answer: gives every item of the batch its share of the reply.
    :param fail: fails every item of the batch with the call's error (the store reports it).
    :param pipe: the :class:`~.pipe.Pipe` the call goes on, if it does: then the batch is made just
        before the pipe's next write (while a write is on its way, items keep gathering).
    :param within: seconds the items may wait for a write that something else makes (``0``: at the
        end of this turn). For calls no request waits for (:attr:`BACKGROUND`): on a quiet worker
        a request's finishing calls then go out with the next request's admission, one write
        (one system call for the worker and one for Redis) instead of two.
    """

    #: How long calls no request waits for (settlements, outcomes) may wait to share a write: a
    #: few arrivals of a worker under load; a slot or a reservation comes back at most this late.
    BACKGROUND = 0.010

    def __init__(self, call: Callable[[list[T]], Awaitable[Any]], answer: Callable[[list[T], Any], None],
                 fail: Callable[[list[T], Exception], None], pipe: Pipe | None = None, *,
                 within: float = 0.0) -> None:
        self._pipe = pipe
        self._call = call
        self._answer = answer
        self._fail = fail
        self._within = within
        self._pending: list[T] = []
        self._flush: asyncio.Handle | None = None
        self._scheduled = False
        self._sent: set[asyncio.Future[Any]] = set()

    def add(self, item: T) -> None:
        self._pending.append(item)
        if self._scheduled:
            return
        self._scheduled = True
        if self._pipe is not None:
            self._pipe.before_write(self._send, self._within)
        elif self._within > 0:
            self._flush = asyncio.get_running_loop().call_later(self._within, self._send)
        else:
            self._flush = asyncio.get_running_loop().call_soon(self._send)

    def hurry(self) -> None:
        """Send what was gathered at the end of this turn, not when a later write or ``within`` comes."""
        if not self._pending:
            return
        if self._pipe is not None:
            self._pipe.before_write(self._send)  # if it was waiting as well, the second call finds nothing
        else:
            if self._flush is not None:
                self._flush.cancel()
            self._flush = asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        if self._flush is not None:
            self._flush.cancel()  # sent early (closing): not again
            self._flush = None
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            call = self._call(batch)
            reply = call if isinstance(call, asyncio.Future) else asyncio.ensure_future(call)
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
        """Stop: what was gathered goes now and every call on its way is awaited (its connection's
        timeouts bound the wait), so no settlement is lost at shutdown; returns what was added
        meanwhile (answering a call may add more), unsent."""
        self._send()
        while self._sent:
            await asyncio.gather(*list(self._sent), return_exceptions=True)
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._scheduled = False
        left, self._pending = self._pending, []
        return left
