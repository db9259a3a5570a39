"""OpenAI-shaped errors.

Every error Floodgate produces itself has OpenAI's body shape
``{"error": {"message", "type", "param", "code"}}`` so that every SDK maps it to
its own exception class. ``Rejection`` is what plugins raise to refuse a request.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

__all__ = ["Rejection", "ConfigError", "error_body", "error_response", "shorten"]

# OpenAI's error "type" for each status the SDKs distinguish.
_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for(status: int) -> str:
    """The OpenAI error ``type`` that belongs to an HTTP status."""
    return _TYPE_FOR_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class Rejection(Exception):
    """Refuse a request with an OpenAI-shaped error.

    Raised by plugins (authentication, admission, ...) and by the core. The core
    renders it as the HTTP ``status`` with the JSON error body and ``headers``.

    :param should_retry: ``False`` adds ``x-should-retry: false`` so SDKs do not
        repeat a request that cannot succeed (bad key, exhausted budget).
        ``None`` leaves the decision to the SDK's status-based default.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type or error_type_for(status)
        self.param = param
        self.headers = dict(headers or {})
        if should_retry is not None:
            self.headers["x-should-retry"] = "true" if should_retry else "false"

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)

    def __repr__(self) -> str:
        return f"Rejection({self.status}, {self.message!r}, code={self.code!r})"


class ConfigError(Exception):
    """A bad setting. ``path`` is the dotted key path, ``line`` its line in the file.

    Plugins raise it from ``proxy_configure``; ``Config.plugin_settings`` raises
    it with the path and line already filled in.
    """

    def __init__(self, path: str, message: str, *, line: int | None = None, source: str = "") -> None:
        self.path = path
        self.message = message
        self.line = line
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}:{self.line} " if self.source and self.line else (
            f"{self.source}: " if self.source else "")
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class ConfigErrors(Exception):
    """Several ``ConfigError``s found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def shorten(value: str, limit: int = 100) -> str:
    """A client-supplied value fit to echo in an error message (bounded, one line)."""
    value = value if value.isprintable() else "".join(c if c.isprintable() else "?" for c in value[:limit + 1])
    return value if len(value) <= limit else value[:limit] + "…"


def error_body(message: str, *, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_response(rejection: Rejection, request_id: str | None = None) -> web.Response:
    headers = dict(rejection.headers)
    if request_id:
        headers["x-request-id"] = request_id
    response = web.Response(status=rejection.status, body=rejection.body(),
                            content_type="application/json", headers=headers)
    if headers.get("Connection", "").lower() == "close":
        response.force_close()  # e.g. a body that stopped arriving: do not wait for the rest
    return response
