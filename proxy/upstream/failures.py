"""What went wrong with an upstream try, and what the client sees of it."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from ..errors import Rejection

EXCERPT_CHARS = 200


class UpstreamError(Exception):
    """A failed upstream try.

    :param kind: ``"http"`` (an error status), ``"timeout"`` (``first_byte`` or
        ``total``), ``"stall"`` (no stream event within ``stall``), ``"connect"``,
        ``"invalid_body"`` (not JSON, truncated, broken, an error event) or
        ``"protocol"``: an answer of the wrong kind for the request, e.g. a stream
        request answered without an SSE stream — deterministic, so repeating the
        same request to the same upstream cannot help.
    :param body: for ``"http"``, the upstream's body when it was an OpenAI-shaped error.
    :param headers: the upstream's response headers, when a response came (its rate-limit
        headers say what the provider allows; never relayed to the client).
    """

    def __init__(self, kind: str, detail: str, *, status: int | None = None,
                 retry_after: float | None = None, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.body = body
        self.headers = headers

    def to_rejection(self) -> Rejection:
        """The error the client sees when this was the last try."""
        if self.kind in ("timeout", "stall"):
            return Rejection(504, f"upstream timed out: {self.detail}", code="upstream_timeout", type="server_error")
        if self.kind == "protocol":
            return Rejection(502, self.detail, code="upstream_protocol_error", type="server_error",
                             should_retry=False)
        if self.kind == "http" and self.status is not None:
            if self.status in (401, 403):
                # The upstream refused Floodgate's own credentials: not the caller's fault.
                return Rejection(502, f"upstream rejected the gateway's credentials (HTTP {self.status})",
                                 code="upstream_auth_failed", type="server_error")
            if 400 <= self.status < 500 and self.body is not None:
                headers = {"retry-after": f"{self.retry_after:g}"} if self.retry_after is not None else {}
                return RelayedRejection(self.status, self.body, headers)
        return Rejection(502, self.detail, code="upstream_error", type="server_error")


class RelayedRejection(Rejection):
    """An upstream's own OpenAI-shaped 4xx error, relayed with its status."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            message = str(orjson.loads(body)["error"].get("message", ""))
        except Exception:
            message = ""
        super().__init__(status, message or f"upstream returned HTTP {status}", headers=headers,
                         should_retry=False if status != 429 else None)
        self._body = body

    def body(self) -> bytes:
        return self._body


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: rare from APIs; let backoff decide


def excerpt(body: bytes) -> str:
    text = body[:EXCERPT_CHARS * 2].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")
