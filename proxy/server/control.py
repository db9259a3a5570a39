"""The supervisor ↔ worker channel: one Unix socket pair per worker, one JSON object a line.

Supervisor to worker: ``{"op": "config", "version": n, "text": ..., "source": ...}``
— the first one starts the worker, later ones reload it (the supervisor validated
the text already). Worker to supervisor: ``{"op": "ready"}`` once it serves, and
``{"op": "reloaded", "version": n, "ok": bool}`` after each reload. End of file
means the other side is gone: a worker whose supervisor died drains and exits.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson

#: Exit status of a worker whose configuration does not build (the supervisor gives up).
EXIT_CONFIG = 78
#: Large enough for any config file (a line is one message).
_LIMIT = 64 * 1024 * 1024


class Channel:
    """One end of a control channel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LIMIT)
        return cls(reader, writer)

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message; a closed channel (the peer died) is not an error here."""
        if self._writer.is_closing():
            return
        self._writer.write(orjson.dumps(message) + b"\n")
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            self._writer.close()

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or ``None`` once the peer is gone."""
        try:
            line = await self._reader.readline()
        except (ConnectionError, OSError, ValueError):
            return None
        if not line:
            return None
        message = orjson.loads(line)
        return message if isinstance(message, dict) else None

    def close(self) -> None:
        self._writer.close()
