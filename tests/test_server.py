"""`floodgate serve` as a real process: shipped config, graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.e2e  # `floodgate serve` as a real process

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if proc.returncode is not None:
                raise AssertionError(f"serve exited with {proc.returncode}")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("serve did not become ready")


async def test_serve_finishes_in_flight_requests_on_sigterm(tmp_path):
    port = _free_port()
    ledger = tmp_path / "usage.db"
    env = {**os.environ, "FLOODGATE_PORT": str(port), "FLOODGATE_LEDGER": str(ledger)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(ROOT / "config.yaml"), cwd=str(tmp_path),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(f"{base}/readyz", proc)
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer fg-demo-key"}) as session:
            # A streamed answer takes ~0.3 s at the shipped mock's 80 tokens/s: SIGTERM arrives mid-stream.
            body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "我的快递到哪了"}]}
            async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                first = await resp.content.readline()
                assert first.startswith(b"data: ")
                proc.send_signal(signal.SIGTERM)
                rest = await resp.read()
            assert rest.rstrip().endswith(b"data: [DONE]")
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = (await proc.stdout.read()).decode()
    assert f"listening on http://127.0.0.1:{port}/v1" in output
    assert "fg-demo-key" not in output
    rows = sqlite3.connect(ledger).execute("SELECT key, status, completion_tokens FROM usage").fetchall()
    assert rows == [("shop-bot", 200, 24)]  # the ledger was flushed on the way out
