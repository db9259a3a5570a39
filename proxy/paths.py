"""One routing truth: the request path is decoded and checked once, before anything runs.

A path that could mean two things — to the gateway's router and to an upstream
that normalises differently — is refused with 400: encoded slashes or
backslashes, dot segments (encoded or not), empty segments, NUL and control
characters, double encoding, non-UTF-8 escapes, anything but an origin-form
target. Passthrough can then only ever build a URL under the upstream's base
path (:func:`upstream_url` checks that again).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

from yarl import URL

from .errors import Rejection

# Escapes that would decode into a path separator or a string terminator.
_FORBIDDEN_ESCAPES = ("%2f", "%5c", "%00")
# The gateway's own model lookup, whose one segment (the id) may hold encoded slashes.
_MODEL_LOOKUP = re.compile(r"^/(?:v1/)?models/[^/]+$")


def _refuse(reason: str) -> Rejection:
    return Rejection(400, f"invalid request path: {reason}", code="invalid_path", param="path",
                     should_retry=False)


def checked_path(raw_path: str, *, model_lookup: bool = False) -> str:
    """The decoded path of a request target (``request.raw_path``), or raise 400.

    The query string is not part of the check (it is relayed as it came).

    :param model_lookup: the request is a ``GET``/``HEAD``, which the gateway answers itself
        on ``/v1/models/{id}``: there (only) an encoded slash is part of the model id
        (``openai%2Fgpt-5``, as SDKs send a pattern's name); it never reaches an upstream.
    """
    path = raw_path.partition("?")[0].partition("#")[0]
    if not path.startswith("/"):
        raise _refuse("only origin-form targets (/v1/...) are accepted")
    lowered = path.lower()
    if model_lookup and _MODEL_LOOKUP.match(path):
        lowered = lowered.replace("%2f", "")
    if any(escape in lowered for escape in _FORBIDDEN_ESCAPES):
        raise _refuse("encoded slashes, backslashes and NUL are not allowed")
    try:
        decoded = urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise _refuse("percent-escapes must encode UTF-8") from None
    try:
        decoded.encode("utf-8")  # raw bytes that were not UTF-8 arrive as surrogates
    except UnicodeEncodeError:
        raise _refuse("the path must be UTF-8") from None
    if "%" in decoded:
        raise _refuse("double percent-encoding is not allowed")
    if "\\" in decoded or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise _refuse("backslashes and control characters are not allowed")
    segments = decoded.split("/")[1:]
    if len(segments) > 1 and "" in segments:
        raise _refuse("empty path segments ('//' or a trailing '/') are not allowed")
    if any(segment in (".", "..") for segment in segments):
        raise _refuse("dot segments ('.', '..') are not allowed")
    return decoded


def upstream_url(base: URL, path: str, query: str = "") -> URL:
    """``base`` + ``/path`` (a :func:`checked_path` tail) + ``?query`` (raw, as the client sent it),
    guaranteed to stay under ``base``'s path."""
    quoted = urllib.parse.quote(path, safe="/:@!$&'()*+,;=-._~")
    url = base.with_path(f"{base.path.rstrip('/')}/{quoted}", encoded=True)
    if query:
        url = URL(f"{url}?{query}")  # requoted: escapes the client sent are kept, not doubled
    prefix = base.path.rstrip("/") + "/"
    if not url.path.startswith(prefix):
        raise _refuse("the path would leave the upstream's base path")
    return url


def passthrough_tail(decoded: str, owned: frozenset[str]) -> str:
    """The path a passthrough request relays, relative to ``/v1`` (or ``/``).

    A path that differs from an endpoint the gateway owns only by letter case is
    refused: an upstream that matches paths case-insensitively would otherwise
    serve it past every policy.
    """
    tail = decoded[4:] if decoded.startswith("/v1/") else "" if decoded == "/v1" else decoded[1:]
    lowered = tail.lower()
    if lowered != tail and any(lowered == p or lowered.startswith(p + "/") for p in owned):
        raise _refuse("endpoint names are lower case")
    return tail


#: Content encodings of request bodies aiohttp decodes (others are refused before reading).
ACCEPTED_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
_CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse header values that are not UTF-8 (401 for credentials, 400 otherwise) and
    request bodies in an encoding the gateway cannot read (415)."""
    for name, value in headers.items():
        if value.isascii():
            continue
        try:
            value.encode("utf-8")  # bytes that were not UTF-8 arrive as surrogates
        except UnicodeEncodeError:
            if name.lower() in _CREDENTIAL_HEADERS:
                raise Rejection(401, "the API key header is not valid UTF-8", code="invalid_api_key",
                                should_retry=False) from None
            raise Rejection(400, f"the {name[:64]} header is not valid UTF-8", code="invalid_header",
                            param=name[:64], should_retry=False) from None
    encoding = headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ACCEPTED_ENCODINGS:
        raise Rejection(415, "unsupported Content-Encoding (identity, gzip and deflate are accepted)",
                        code="unsupported_content_encoding", should_retry=False)
