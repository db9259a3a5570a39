"""An auto-pipelined Redis connection for the stores' script calls on the hot path.

redis-py's asyncio client sends one command per pooled connection and waits for its
reply before the connection serves the next: every call pays a pool checkout, a retry
wrapper and a task wake-up (about a third of what Redis state cost a request), and two
calls made by one request (its rate limits and its budget) are two round trips.

A :class:`Pipe` is one connection per worker on which every command issued during
one turn of the event loop goes out in a single write, without waiting for the replies
of earlier writes; replies come back in order and resolve the callers' futures. So
what the plugins ask for one request at admission shares one round trip, and a busy
worker's calls share its writes and reads. Packing and parsing are hiredis's (C).

Scripts are called by SHA (``EVALSHA``); a ``NOSCRIPT`` reply (Redis restarted or its
script cache was flushed) sends that call again with its body (``EVAL``); any other
error reply fails the call with redis-py's ``ResponseError``. A call is never sent
twice otherwise: when the connection breaks or a reply is later than the command
timeout, every call waiting on it fails (``ConnectionError`` or ``TimeoutError``,
which :data:`~proxy.state.STATE_ERRORS` covers), since it may or may not have run,
and the next call connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ResponseError

from .futures import relay

__all__ = ["Pipe", "PipeScript"]

_Args = tuple[Any, ...]
_Call = tuple["asyncio.Future[Any]", _Args, "str | None"]


class PipeScript:
    """A Lua script run on a :class:`Pipe`; called like redis-py's ``AsyncScript``."""

    def __init__(self, pipe: Pipe, body: str) -> None:
        self.pipe = pipe
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()

    def __call__(self, keys: list[Any] | tuple[Any, ...] = (), args: list[Any] | tuple[Any, ...] = ()
                 ) -> asyncio.Future[Any]:
        """The reply (a future): sent at the end of this turn of the event loop, with the rest."""
        return self.pipe.send(("EVALSHA", self.sha, len(keys), *keys, *args), self.body)


class Pipe:
    """One auto-pipelined connection to the Redis at ``url`` (see the module docstring).

    :param url: ``redis://``, ``rediss://`` or ``unix://``, as redis-py reads it (user,
        password and database included).
    :param connect_timeout: seconds to open the connection (and authenticate).
    :param command_timeout: seconds a reply may take; past it the connection is dropped.
    :param name: the connection's ``CLIENT SETNAME``.
    """

    def __init__(self, url: str, *, connect_timeout: float = 1.0, command_timeout: float = 1.0,
                 name: str | None = None) -> None:
        self._options = parse_url(url)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.name = name
        self._link: _Link | None = None
        self._outbox: list[bytes] = []  # packed, to go out in this turn's write
        self._queued: list[_Call] = []
        self._flush: asyncio.Handle | None = None
        self._flushers: list[Callable[[], None]] = []
        self._deadline: asyncio.TimerHandle | None = None  # the latest write for flushers that may wait
        self._writing = False
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False
        self._scripts: set[str] = set()
        self._failure = ""
        #: Writes and commands sent so far (a round trip carries one write).
        self.writes = 0
        self.commands = 0

    # -- calls ---------------------------------------------------------------------------
    def script(self, body: str) -> PipeScript:
        """A script run by SHA; loaded into Redis whenever the pipe connects (no ``NOSCRIPT``
        round for the first calls after a start or a reconnection)."""
        self._scripts.add(body)
        return PipeScript(self, body)

    async def connect(self) -> None:
        """Connect now rather than on the first call (at start-up: the first request does not wait
        for it). Raises what connecting raised; calls made meanwhile wait for it."""
        if self._link is not None and not self._link.lost:
            return
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        connecting = self._connecting
        await asyncio.shield(connecting)
        if self._link is None or self._link.lost:
            raise ConnectionError(self._failure or "could not connect to Redis")

    register_script = script  # the name redis-py's client gives it: stores take either

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """One command's reply (a future), sent with this turn's others."""
        return self.send(args)

    def send(self, args: _Args, script: str | None = None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(ConnectionError("the Redis pipe is closed"))
            return future
        self._queued.append((future, args, script))
        self._outbox.append(hiredis.pack_command(args))
        if self._flush is None and not self._writing:
            self._flush = loop.call_soon(self._write)
        return future

    def before_write(self, flush: Callable[[], None], within: float = 0.0) -> None:
        """Call ``flush`` just before the next write (it sends what it gathered: a
        :class:`~.coalesce.Coalescer`'s items, as late as can be, so as many as can be). The next
        write is at the end of this turn, or (``within`` > 0) whenever another call makes one, and
        ``within`` seconds from now at the latest."""
        self._flushers.append(flush)
        if self._flush is not None or self._writing:
            return
        loop = asyncio.get_running_loop()
        if within <= 0:
            self._flush = loop.call_soon(self._write)
        elif self._deadline is None or self._deadline.when() > loop.time() + within:  # the earliest wins
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = loop.call_later(within, self._overdue)

    def _overdue(self) -> None:
        self._deadline = None
        self._kick()

    def _kick(self) -> None:
        if self._flush is None and not self._writing and (self._queued or self._flushers):
            self._flush = asyncio.get_running_loop().call_soon(self._write)

    def _write(self) -> None:
        """End of a turn (or the replies of the write on its way are in): write what is queued,
        unless a write is still on its way — then the next goes when its replies are in."""
        self._flush = None
        link = self._link
        if link is not None and link.busy:
            return  # called again when its replies are in (_Link.data_received)
        if self._flushers:
            flushers, self._flushers = self._flushers, []
            if self._deadline is not None:  # they go now
                self._deadline.cancel()
                self._deadline = None
            self._writing = True
            try:
                for flush in flushers:
                    flush()
            finally:
                self._writing = False
        if not self._queued:
            return
        if link is None or link.lost:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return  # written once connected
        queued, self._queued = self._queued, []
        outbox, self._outbox = self._outbox, []
        link.write(b"".join(outbox), queued)
        self.writes += 1
        self.commands += len(queued)

    def _again(self, future: asyncio.Future[Any], args: _Args, script: str) -> None:
        """A script Redis no longer knows: the same call with its body (which loads it)."""
        relay(self.send(("EVAL", script, *args[2:])), future)

    # -- the connection --------------------------------------------------------------------
    async def _connect(self) -> None:
        try:
            link = await asyncio.wait_for(self._open(), self.connect_timeout)
        except Exception as exc:  # refused, timed out (an OSError), AUTH or SELECT refused; no call may hang
            error = exc if isinstance(exc, OSError) else ConnectionError(f"Redis refused the connection: {exc}")
            self._failure = f"{type(error).__name__}: {error}"
            queued, self._queued, self._outbox = self._queued, [], []
            _fail(queued, error)
            return
        finally:
            self._connecting = None
        if self._closed:
            link.close()
            return
        self._link = link
        if (self._queued or self._flushers) and self._flush is None:
            self._write()

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()
        options = self._options
        link = _Link(self)
        if options.get("connection_class") is UnixDomainSocketConnection:
            transport, _ = await loop.create_unix_connection(lambda: link, options["path"])
        else:
            context = None
            if options.get("connection_class") is SSLConnection:
                context = ssl.create_default_context()
                if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            transport, _ = await loop.create_connection(lambda: link, options.get("host", "localhost"),
                                                        options.get("port", 6379), ssl=context)
        link.connection_made(transport)  # uvloop may not have called it yet
        handshake: list[_Args] = []
        if options.get("password") is not None:
            user = options.get("username")
            handshake.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if options.get("db"):
            handshake.append(("SELECT", options["db"]))
        if self.name:
            handshake.append(("CLIENT", "SETNAME", self.name))
        handshake += [("SCRIPT", "LOAD", body) for body in sorted(self._scripts)]
        calls: list[_Call] = [(loop.create_future(), args, None) for args in handshake]
        if calls:
            link.write(b"".join(hiredis.pack_command(args) for args in handshake), calls)
        try:
            for future, _, _ in calls:
                await future
        except BaseException:
            link.close()
            raise
        return link

    async def close(self) -> None:
        self._closed = True
        for handle in (self._flush, self._deadline):
            if handle is not None:
                handle.cancel()
        self._flush = self._deadline = None
        flushers, self._flushers = self._flushers, []
        for flush in flushers:  # what they gathered fails now (sent on a closed pipe), rather than never
            flush()
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        queued, self._queued, self._outbox = self._queued, [], []
        _fail(queued, ConnectionError("the Redis pipe is closed"))
        link, self._link = self._link, None
        if link is not None:
            link.close()


class _Link(asyncio.Protocol):
    """One connection of a :class:`Pipe`: what was written on it, and its replies in order."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.lost = False
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._waiting: deque[_Call] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._heard = 0.0  # when the last reply came (or the first write to an idle link went)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def write(self, data: bytes, calls: list[_Call]) -> None:
        assert self._transport is not None
        if not self._waiting:
            self._heard = time.monotonic()
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.pipe.command_timeout, self._check)
        self._waiting.extend(calls)
        self._transport.write(data)

    @property
    def busy(self) -> bool:
        """Whether the last write's replies are still on their way (the next write waits for them:
        one write in flight gathers the most calls per write and read, for the gateway and Redis)."""
        return bool(self._waiting) and not self.lost

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        self._heard = time.monotonic()
        waiting = self._waiting
        while (reply := reader.gets()) is not False:
            if not waiting:
                self._drop(ConnectionError("Redis sent a reply nobody asked for"))
                return
            future, args, script = waiting.popleft()
            if isinstance(reply, hiredis.ReplyError):
                if script is not None and str(reply).startswith("NOSCRIPT"):
                    self.pipe._again(future, args, script)
                elif not future.done():
                    future.set_exception(ResponseError(str(reply)))
            elif not future.done():
                future.set_result(reply)
        if not waiting and not self.lost and self.pipe._link is self:
            self.pipe._write()  # what was queued meanwhile goes now

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop(ConnectionError(f"Redis closed the connection{f': {exc}' if exc else ''}"))

    def _check(self) -> None:
        """Every ``command_timeout`` while replies are awaited: is Redis still answering?"""
        self._timer = None
        if not self._waiting or self.lost:
            return
        timeout = self.pipe.command_timeout
        late = time.monotonic() - self._heard
        if late < timeout:
            self._timer = asyncio.get_running_loop().call_later(timeout - late, self._check)
            return
        self._drop(TimeoutError(f"Redis did not answer within {timeout:g}s"))

    def _drop(self, error: BaseException) -> None:
        """Fail every call waiting on this link and close it (late replies must not be taken for
        later calls'); the pipe connects again for the next call."""
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = list(self._waiting), deque()
        _fail(waiting, error)
        if self._transport is not None:
            self._transport.abort()
        if self.pipe._link is self:
            self.pipe._kick()  # what was held for this link's replies goes on a new one

    def close(self) -> None:
        self._drop(ConnectionError("the Redis pipe is closed"))


def _fail(calls: list[_Call], error: BaseException) -> None:
    for future, _, _ in calls:
        if not future.done():
            future.set_exception(error)
