"""Upstream connections: one pooled session per upstream, created at start-up.

:meth:`Upstreams.open` sends one request and returns the response once its
headers show success; everything that can go wrong on the way (refused or reset
connections, timeouts, error statuses, HTML error pages) becomes an
:class:`UpstreamError` that says what kind of failure it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import orjson
from yarl import URL

from ..config import AttemptTimeouts, Config, UpstreamSettings
from ..errors import error_body
from ..paths import upstream_url
from .failures import EXCERPT_CHARS, UpstreamError, excerpt, parse_retry_after

log = logging.getLogger("floodgate.upstream")

_MAX_ERROR_BODY = 64 * 1024


class Upstreams:
    """The pooled HTTP sessions of one application, by upstream name."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._base_urls: dict[str, URL] = {}
        self._urls: dict[tuple[str, str], URL] = {}  # (upstream, endpoint) of model calls, built once
        self._auth: dict[str, dict[str, str]] = {}
        self._json_headers: dict[str, dict[str, str]] = {}  # the auth headers + Content-Type: JSON
        self._connect_timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def ready(self) -> bool:
        return bool(self._sessions) and all(not s.closed for s in self._sessions.values())

    async def start(self, builtin: Callable[[str, UpstreamSettings], Awaitable[str | None]]) -> None:
        """Open one pooled session per upstream.

        :param builtin: starts a ``builtin:`` upstream and returns its URL (the
            ``proxy_builtin_upstream`` hook), ``None`` when no plugin serves it.
        """
        for name, settings in self._config.upstreams.items():
            base_url = settings.base_url
            if settings.is_builtin:
                started = await builtin(name, settings)
                if started is None:
                    raise RuntimeError(f"upstreams.{name}.base_url: no loaded plugin serves {base_url!r} "
                                       "(the mock upstream is the 'mock' plugin of the floodgate package)")
                base_url = started.rstrip("/")
            self._base_urls[name] = URL(base_url)
            headers = dict(settings.headers)
            if settings.api_key is not None:
                headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
            self._auth[name] = headers
            self._json_headers[name] = {**headers, "Content-Type": "application/json"}
            connector = aiohttp.TCPConnector(limit=settings.pool_size, limit_per_host=settings.pool_size,
                                             ttl_dns_cache=300, enable_cleanup_closed=True)
            self._sessions[name] = aiohttp.ClientSession(
                connector=connector, auto_decompress=True,
                # No Accept-Encoding: JSON answers are small and streams must not be compressed.
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.timeouts.connect),
            )

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def open(self, upstream: str, method: str, path: str, *, body: bytes | AsyncIterator[bytes] | None,
                   headers: Mapping[str, str], timeouts: AttemptTimeouts, query: str | None = None,
                   content_type: str | None = "application/json") -> aiohttp.ClientResponse:
        """:meth:`send`, bounded by ``timeouts.first_byte`` from now (raises :class:`UpstreamError`)."""
        try:
            async with asyncio.timeout(timeouts.first_byte):
                return await self.send(upstream, method, path, body=body, headers=headers, timeouts=timeouts,
                                       query=query, content_type=content_type)
        except TimeoutError:
            raise first_byte_timeout(timeouts) from None

    async def send(self, upstream: str, method: str, path: str, *, body: bytes | AsyncIterator[bytes] | None,
                   headers: Mapping[str, str], timeouts: AttemptTimeouts, query: str | None = None,
                   content_type: str | None = "application/json") -> aiohttp.ClientResponse:
        """Send a request; return the response once its headers show a 2xx status.

        The caller bounds the wait (:meth:`open`, or an attempt's :class:`~.watchdog.Watchdog`)
        and reads (and releases) the body. Raises :class:`UpstreamError`.
        """
        session = self._sessions[upstream]
        url: URL | None
        if query is not None:  # passthrough: any path under the base, with the client's query
            url = upstream_url(self._base_urls[upstream], path, query)
        else:  # a model endpoint: a handful of URLs, built once
            url = self._urls.get((upstream, path))
            if url is None:
                url = self._urls[(upstream, path)] = upstream_url(self._base_urls[upstream], path)
        if body is not None and content_type == "application/json" and not headers:
            send_headers = self._json_headers[upstream]  # the common case: prepared once per upstream
        else:
            send_headers = {**headers, **self._auth[upstream]}
            if body is not None and content_type:
                send_headers["Content-Type"] = content_type
        client_timeout = self._connect_timeouts.get(timeouts.connect)
        if client_timeout is None:
            client_timeout = self._connect_timeouts[timeouts.connect] = aiohttp.ClientTimeout(
                total=None, sock_connect=timeouts.connect)
        try:
            response = await session.request(method, url, data=body, headers=send_headers,
                                             allow_redirects=False, timeout=client_timeout)
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or exc.os_error
            raise UpstreamError("connect", f"cannot connect to upstream {upstream!r}: {reason}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:  # reset, closed, body failed
            raise UpstreamError("connect",
                                f"upstream {upstream!r} closed the connection: {type(exc).__name__}") from None
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError("invalid_body",
                                f"upstream {upstream!r} sent an invalid response: {exc.message}") from None
        if response.status < 300:
            return response
        try:
            await self._raise_for_status(upstream, response, timeouts)
        finally:
            response.release()
        raise AssertionError("unreachable")

    async def _raise_for_status(self, upstream: str, response: aiohttp.ClientResponse,
                                timeouts: AttemptTimeouts) -> None:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        try:
            async with asyncio.timeout(timeouts.total):
                raw = await response.content.read(_MAX_ERROR_BODY)
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        relay: bytes | None = None
        try:
            data = orjson.loads(raw)
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                relay = raw
                message = str(data["error"].get("message", ""))[:EXCERPT_CHARS]
            else:
                message = excerpt(raw)
        except orjson.JSONDecodeError:
            message = excerpt(raw)
            if 400 <= response.status < 500:
                # A 4xx the client must see, but not in OpenAI's shape: wrap it.
                relay = error_body(f"upstream returned HTTP {response.status}: {message}",
                                   type="invalid_request_error", code="upstream_error")
        kind_of_body = response.headers.get("Content-Type", "unknown content").split(";")[0]
        detail = f"upstream {upstream!r} returned HTTP {response.status} ({kind_of_body})"
        if message:
            detail += f": {message}"
        raise UpstreamError("http", detail, status=response.status, retry_after=retry_after, body=relay,
                            headers=response.headers)


def first_byte_timeout(timeouts: AttemptTimeouts) -> UpstreamError:
    return UpstreamError("timeout", f"no response within the first_byte timeout ({timeouts.first_byte:g}s)")
