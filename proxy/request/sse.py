"""Relaying an upstream SSE stream to the client, event by event.

The relay never buffers beyond one incomplete event: each network read is split
at event boundaries and the complete events are returned at once. On chat and
completions streams it keeps OpenAI's framing (``data:`` lines and ``:``
comments only), notices the usage chunk and the finish without parsing the
other chunks, and drops the usage chunk when Floodgate asked for it on the
client's behalf. ``/v1/responses`` streams keep their ``event:`` lines and end
without ``[DONE]``.

Until the first *meaningful* event (content, a tool call, a refusal or a finish:
:attr:`SSERelay.meaningful`) every event is parsed to tell, and an error event is
raised as :class:`UpstreamStreamError` — the caller holds those events back and
may still fail over. After it, events are relayed without being parsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from ..types import StreamChunk, Usage

# A usage chunk has a non-null "usage"; every other chunk of an include_usage
# stream carries "usage": null. Only chunks that pass this test are parsed.
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null')
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_DONE = b"[DONE]"
_DONE_EVENT = b"data: [DONE]\n\n"
# Chat delta fields that carry something for the user (DeepSeek-style reasoning included).
_DELTA_CONTENT = ("content", "tool_calls", "function_call", "refusal", "reasoning_content", "reasoning",
                  "audio")
# /v1/responses events that announce rather than carry: held until something real comes.
_RESPONSES_PREAMBLE = frozenset({"response.created", "response.in_progress", "response.queued",
                                 "response.content_part.added"})
_RESPONSES_EMPTY_ITEMS = frozenset({"message", "reasoning"})
_RESPONSES_TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")


class UpstreamStreamError(Exception):
    """The upstream sent an error event before anything reached the client."""


def _chat_meaningful(obj: Any) -> bool:
    """Whether a chat/completions chunk carries content, a tool call, a refusal or a finish."""
    if not isinstance(obj, dict):
        return False
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(delta.get(key) for key in _DELTA_CONTENT):
            return True
    return False


def _responses_meaningful(obj: Any) -> bool:
    """Whether a ``/v1/responses`` event is more than an announcement."""
    if not isinstance(obj, dict):
        return True
    kind = obj.get("type")
    if kind in _RESPONSES_PREAMBLE:
        return False
    if kind == "response.output_item.added":
        item = obj.get("item")
        return not (isinstance(item, dict) and item.get("type") in _RESPONSES_EMPTY_ITEMS)
    return True


class SSERelay:
    """Turns upstream bytes into the bytes to send to the client.

    :param openai_framing: chat/completions streams (``data:`` only, ``[DONE]``);
        ``False`` relays events verbatim (``/v1/responses``).
    :param hide_usage: drop the usage-only chunk (Floodgate asked for it, the client did not).
    :param on_chunk: called with each data event when some plugin wants to see chunks.

    State read by the caller: ``meaningful`` (a meaningful event was seen),
    ``finished`` (the answer is complete: a ``finish_reason``, the usage chunk or a
    terminal ``response.*`` event), ``done`` (``[DONE]`` or ``event: done`` was seen),
    ``events`` (events returned so far) and ``content_events`` (data events since
    the first meaningful one, about one token each).
    """

    __slots__ = ("_buffer", "_openai", "_hide_usage", "_on_chunk", "usage", "done", "finished",
                 "meaningful", "events", "content_events")

    def __init__(self, *, openai_framing: bool, hide_usage: bool,
                 on_chunk: Callable[[StreamChunk], None] | None = None) -> None:
        self._buffer = b""
        self._openai = openai_framing
        self._hide_usage = hide_usage
        self._on_chunk = on_chunk
        self.usage: Usage | None = None
        self.done = False
        self.finished = False
        self.meaningful = False
        self.events = 0
        self.content_events = 0

    def feed(self, data: bytes) -> bytes:
        """Accept a network read; return the complete events to send (or hold) now."""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        buffer = self._buffer + data if self._buffer else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return b""
        self._buffer = buffer[end + 2:]
        complete = buffer[:end]
        return self._openai_events(complete) if self._openai else self._verbatim_events(complete)

    @property
    def complete(self) -> bool:
        """The stream said everything it had to: ``[DONE]``, or (lenient, as some
        OpenAI-compatible servers end) a finish or the usage chunk before a clean end."""
        return self.done or self.finished

    # -- chat and completions ----------------------------------------------------
    def _openai_events(self, complete: bytes) -> bytes:
        out: list[bytes] = []
        for block in complete.split(b"\n\n"):
            if block.startswith(b"event:") and block.split(b"\n", 1)[0][6:].strip() == b"done":
                block = b"data: [DONE]"  # `event: done` ends the stream like [DONE]
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    kept = self._data(line[5:].strip())
                    if kept is not None:
                        out.append(b"data: " + kept + b"\n\n")
                elif line.startswith(b":"):
                    out.append(line + b"\n\n")
                # event:/id:/retry: lines are not part of OpenAI's chat framing: dropped.
        self.events += len(out)
        return b"".join(out)

    def _data(self, payload: bytes) -> bytes | None:
        if payload == _DONE:
            if self.done:
                return None  # `event: done` followed by [DONE]: one end for the client
            self.done = True
            return payload
        if not self.meaningful:
            self._before_content(payload)
        else:
            self.content_events += 1
        if b'"usage"' in payload and not _USAGE_NULL.search(payload):
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                usage = Usage.from_openai(obj.get("usage"))
                if usage is not None:
                    self.usage = usage
                    self.finished = True
                    if self._hide_usage and not obj.get("choices"):
                        return None
        if not self.finished and _FINISHED.search(payload):
            self.finished = True
        if self._on_chunk is not None:
            chunk = StreamChunk(payload)
            self._on_chunk(chunk)
            if chunk.drop:
                return None
            payload = chunk.raw
        return payload

    def _before_content(self, payload: bytes) -> None:
        """Parse a chunk that arrived before any content: an error, or the first meaningful one?"""
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamStreamError(f"not JSON: {payload[:120].decode('utf-8', 'replace')}") from None
        if isinstance(obj, dict) and obj.get("error"):
            raise UpstreamStreamError(payload[:300].decode("utf-8", "replace"))
        if _chat_meaningful(obj):
            self.meaningful = True

    # -- /v1/responses -----------------------------------------------------------
    def _verbatim_events(self, complete: bytes) -> bytes:
        for block in complete.split(b"\n\n"):
            self.events += 1
            if not self.meaningful:
                self._responses_before_content(block)
            else:
                self.content_events += 1
            if any(terminal in block for terminal in _RESPONSES_TERMINAL):
                self.finished = self.done = True
                usage = None
                for line in block.split(b"\n"):
                    if line.startswith(b"data:"):
                        try:
                            obj = orjson.loads(line[5:])
                            usage = Usage.from_openai((obj.get("response") or {}).get("usage"))
                        except (orjson.JSONDecodeError, AttributeError):
                            usage = None
                if usage is not None:
                    self.usage = usage
        return complete + b"\n\n"

    def _responses_before_content(self, block: bytes) -> None:
        obj: Any = None
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    obj = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    raise UpstreamStreamError(f"not JSON: {line[:120].decode('utf-8', 'replace')}") from None
            elif line.startswith(b"event:") and line[6:].strip() in (b"error", b"response.failed"):
                raise UpstreamStreamError(block[:300].decode("utf-8", "replace"))
        if obj is None:
            return  # a comment or an event without data: held
        if isinstance(obj, dict) and (obj.get("type") in ("error", "response.failed") or obj.get("error")):
            raise UpstreamStreamError(block[:300].decode("utf-8", "replace"))
        if _responses_meaningful(obj):
            self.meaningful = True
