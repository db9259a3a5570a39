"""Relaying an upstream SSE stream to the client, event by event.

The relay never buffers beyond one incomplete event: each network read is split
at event boundaries and the complete events are written at once. On chat and
completions streams it keeps OpenAI's framing (``data:`` lines and ``:``
comments only), notices the usage chunk without parsing the other chunks, and
drops that chunk when Floodgate asked for it on the client's behalf.
``/v1/responses`` streams keep their ``event:`` lines and end without ``[DONE]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson

from ..types import StreamChunk, Usage

# A usage chunk has a non-null "usage"; every other chunk of an include_usage
# stream carries "usage": null. Only chunks that pass this test are parsed.
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null')
_DONE = b"[DONE]"


class UpstreamStreamError(Exception):
    """The upstream sent an error event before anything reached the client."""


class SSERelay:
    """Turns upstream bytes into the bytes to send to the client.

    :param openai_framing: chat/completions streams (``data:`` only, ``[DONE]``);
        ``False`` relays events verbatim (``/v1/responses``).
    :param hide_usage: drop the usage-only chunk (Floodgate asked for it, the client did not).
    :param on_chunk: called with each data event when some plugin wants to see chunks.
    """

    __slots__ = ("_buffer", "_openai", "_hide_usage", "_on_chunk", "usage", "done", "data_events", "sent_any")

    def __init__(self, *, openai_framing: bool, hide_usage: bool,
                 on_chunk: Callable[[StreamChunk], None] | None = None) -> None:
        self._buffer = b""
        self._openai = openai_framing
        self._hide_usage = hide_usage
        self._on_chunk = on_chunk
        self.usage: Usage | None = None
        self.done = False
        self.data_events = 0
        self.sent_any = False

    def feed(self, data: bytes) -> bytes:
        """Accept a network read; return the complete events to send now."""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        buffer = self._buffer + data if self._buffer else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return b""
        self._buffer = buffer[end + 2:]
        complete = buffer[:end]
        out = self._openai_events(complete) if self._openai else self._verbatim_events(complete)
        return out

    @property
    def pending(self) -> bytes:
        """An incomplete trailing event (the stream ended mid-event)."""
        return self._buffer

    def _openai_events(self, complete: bytes) -> bytes:
        out: list[bytes] = []
        for block in complete.split(b"\n\n"):
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    payload = line[5:].strip()
                    kept = self._data(payload)
                    if kept is not None:
                        out.append(b"data: " + kept + b"\n\n")
                elif line.startswith(b":"):
                    out.append(line + b"\n\n")
                # event:/id:/retry: lines are not part of OpenAI's chat framing: dropped.
        return b"".join(out)

    def _data(self, payload: bytes) -> bytes | None:
        if payload == _DONE:
            self.done = True
            return payload
        self.data_events += 1
        if not self.sent_any and payload.startswith(b'{"error"'):
            raise UpstreamStreamError(payload[:300].decode("utf-8", "replace"))
        if b'"usage"' in payload and not _USAGE_NULL.search(payload):
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                usage = Usage.from_openai(obj.get("usage"))
                if usage is not None:
                    self.usage = usage
                    if self._hide_usage and not obj.get("choices"):
                        return None
        if self._on_chunk is not None:
            chunk = StreamChunk(payload)
            self._on_chunk(chunk)
            if chunk.drop:
                return None
            payload = chunk.raw
        self.sent_any = True
        return payload

    def _verbatim_events(self, complete: bytes) -> bytes:
        for block in complete.split(b"\n\n"):
            self.data_events += 1
            if b"response.completed" in block or b"response.incomplete" in block or b"response.failed" in block:
                self.done = True
                for line in block.split(b"\n"):
                    if line.startswith(b"data:"):
                        try:
                            obj = orjson.loads(line[5:])
                            usage = Usage.from_openai((obj.get("response") or {}).get("usage"))
                        except (orjson.JSONDecodeError, AttributeError):
                            usage = None
                        if usage is not None:
                            self.usage = usage
        self.sent_any = True
        return complete + b"\n\n"
