"""Which headers cross the gateway, in each direction."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

# Request headers never forwarded: hop-by-hop ones, the client's credentials
# (a Floodgate key), and what aiohttp sets itself.
_DROP_REQUEST = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length", "authorization",
    "api-key", "x-api-key", "cookie", "accept-encoding", "x-request-id", "openai-organization",
    "openai-project", "content-type", "x-floodgate-tier", "content-encoding",
})
# Response headers not relayed: hop-by-hop, framing recomputed by us, and the
# upstream's own rate-limit/identity headers (they describe Floodgate's account).
_DROP_RESPONSE = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "content-length", "content-encoding", "date",
    "server", "set-cookie", "x-request-id", "openai-organization", "openai-project",
})

def forwardable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _DROP_REQUEST}


def relayable_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The upstream's response headers the client may see, every value kept (passthrough)."""
    return CIMultiDict((k, v) for k, v in headers.items() if _relayable(k.lower()))


def relayable_dict(headers: Mapping[str, str]) -> dict[str, str]:
    """The same as one plain mapping with lower-case names, to which the gateway's own headers
    are added by name (a repeated upstream header is joined with ``, ``, as HTTP allows)."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        if _relayable(name):
            out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _relayable(name: str) -> bool:
    return name not in _DROP_RESPONSE and not name.startswith("x-ratelimit-")
