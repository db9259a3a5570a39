"""The server's edges, on a real listening socket (``run_app``): protocol errors in
OpenAI's shape, slow and silent clients cut off, bounded repeated log lines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy import create_app
from proxy.config import config_from_dict
from proxy.server import listen_socket, run_app
from proxy.server.logs import RepeatFilter
from proxy.testing import mock_config

CHAT = orjson.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
async def served(mock_upstream: Any) -> AsyncIterator[Any]:
    """Start ``run_app`` on a free port with short client timeouts; yields (host, port)."""
    config = config_from_dict(mock_config(mock_upstream.url, server={
        "timeouts": {"headers": 0.3, "body": 0.3, "keepalive": 5}, "shutdown_timeout": 1}))
    app = create_app(config, builtins=(), entry_points=False)
    sock = listen_socket("127.0.0.1", 0)
    stop = asyncio.Event()
    task = asyncio.create_task(run_app(app, config, sock, stop))
    host, port = sock.getsockname()[:2]
    for _ in range(100):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            break
        await asyncio.sleep(0.02)
    yield host, port
    stop.set()
    await task


async def exchange(host: str, port: int, data: bytes, *, pause_after: int | None = None) -> bytes:
    """Write ``data`` (stopping after ``pause_after`` bytes, then waiting), return all that came back."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data if pause_after is None else data[:pause_after])
    await writer.drain()
    received = await asyncio.wait_for(reader.read(), 10)  # generous: it is the server that must close
    writer.close()
    return received


def status_and_body(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body) if body else None


async def test_malformed_http_gets_an_openai_error(served):
    host, port = served
    raw = await exchange(host, port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
    status, body = status_and_body(raw)
    assert status == 400 and body["error"]["code"] == "invalid_http"
    raw = await exchange(host, port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\n"
                                     b"Content-Length: 4\r\nConnection: close\r\n\r\nabcd")
    status, body = status_and_body(raw)
    assert status in (400, 415) and body["error"]["type"] == "invalid_request_error"


async def test_a_silent_connection_is_closed_at_the_headers_deadline(served):
    host, port = served
    # Half a request line, then nothing: the server hangs up (read() returns what it sent: nothing).
    assert await exchange(host, port, b"POST /v1/chat/compl", pause_after=19) == b""


async def test_a_slow_body_is_cut_off_while_other_clients_are_served(served):
    host, port = served
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(CHAT)}\r\n\r\n").encode()
    slow = asyncio.create_task(exchange(host, port, head + CHAT, pause_after=len(head) + 5))
    fast = await exchange(host, port, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + CHAT)
    assert status_and_body(fast)[0] == 200
    status, body = status_and_body(await slow)
    assert status == 408 and body["error"]["code"] == "request_timeout"


def test_repeated_log_lines_are_bounded():
    now = [0.0]
    repeat = RepeatFilter(10.0, clock=lambda: now[0])

    def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("asyncio", level, __file__, 1, msg, None, None)

    passed = [repeat.filter(record("socket.accept() out of system resource")) for _ in range(1000)]
    assert passed.count(True) == 1
    assert repeat.filter(record("something else"))  # a different line is not held back
    assert repeat.filter(record("an access log line", logging.INFO))  # info is never limited
    now[0] = 11.0
    again = record("socket.accept() out of system resource")
    assert repeat.filter(again) and "(999 more like this in the last 10s)" in again.getMessage()
