"""Usage of a Responses call that passed through: a stored prompt (``prompt: {id: ...}``)
names no model, so the gateway cannot route it, but its answer says which model ran and
what it used.

The relay stays byte for byte; :class:`UsageMeter` only watches: a JSON answer is kept
(up to :data:`MAX_JSON_BYTES`) and read once at the end, an SSE stream is scanned for its
final ``response.completed`` (``.incomplete``, ``.failed``) event.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..config import Config
from ..types import AttemptRecord, RequestContext, Target, Usage

#: A longer JSON answer is relayed without reading its usage.
MAX_JSON_BYTES = 8 * 1024 * 1024
_FINAL_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")


class UsageMeter:
    """Reads the usage and model of one relayed ``POST /v1/responses`` answer."""

    __slots__ = ("_sse", "_parts", "_pending", "_size", "_response")

    def __init__(self, *, sse: bool) -> None:
        self._sse = sse
        self._parts: list[bytes] = []  # a JSON answer so far
        self._pending = b""  # an SSE stream's incomplete last event
        self._size = 0
        self._response: Any = None

    @classmethod
    def of(cls, ctx: RequestContext, content_type: str) -> UsageMeter | None:
        """A meter for a Responses call's answer (JSON or SSE), else ``None``."""
        if ctx.endpoint != "responses" or ctx.method != "POST":
            return None
        kind = content_type.partition(";")[0].strip().lower()
        if kind == "text/event-stream":
            return cls(sse=True)
        if kind == "application/json":
            return cls(sse=False)
        return None

    def feed(self, data: bytes) -> None:
        if not self._sse:
            self._size += len(data)
            if self._size <= MAX_JSON_BYTES:
                self._parts.append(data)
            return
        buffer = self._pending + data.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._pending = buffer if len(buffer) <= MAX_JSON_BYTES else b""  # no event is that long
            return
        self._pending = buffer[end + 2:]
        for event in buffer[:end].split(b"\n\n"):
            if any(name in event for name in _FINAL_EVENTS):
                self._read_final(event)

    def _read_final(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    payload = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(payload, dict) and isinstance(payload.get("response"), dict):
                    self._response = payload["response"]

    def settle(self, ctx: RequestContext, record: AttemptRecord, config: Config) -> None:
        """Set ``ctx.usage``, and price the attempt at the model the answer names when the
        catalogue serves that name (else it stays unpriced: the cost plugin sees no model)."""
        response = self._response
        if not self._sse and self._size <= MAX_JSON_BYTES:
            try:
                response = orjson.loads(b"".join(self._parts))
            except orjson.JSONDecodeError:
                return
        if not isinstance(response, dict):
            return
        ctx.usage = Usage.from_openai(response.get("usage"))
        model = response.get("model")
        if not isinstance(model, str) or not model or ctx.usage is None:
            return
        resolved = config.resolve(model)
        if resolved is not None:
            record.target = Target(model=resolved, upstream=record.target.upstream, upstream_model=model)
