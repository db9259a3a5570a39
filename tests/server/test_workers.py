"""``floodgate serve --workers 2`` as real processes: shared metrics, restarts, draining."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import aiohttp
import pytest
from fleet_helpers import DEMO_KEY, ROOT, gateway_config

from proxy.cli import main

pytestmark = pytest.mark.e2e

HOURS_Q = {"model": "auto", "messages": [{"role": "user", "content": "营业时间"}]}
STREAM_Q = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "我的快递到哪了"}]}
CHAT_TOTAL = re.compile(r'^floodgate_requests_total\{endpoint="chat/completions",model="-",status="200"\} (\S+)$',
                        re.M)


def served_by(log: str) -> set[str]:
    return set(re.findall(r"floodgate\.access .*worker=(\d+) key=shop-bot", log))


async def faq(session: aiohttp.ClientSession, base: str) -> None:
    # A new connection each time: the kernel hands it to whichever worker accepts first.
    async with session.post(f"{base}/v1/chat/completions", json=HOURS_Q,
                            headers={**DEMO_KEY, "Connection": "close"}) as response:
        assert response.status == 200, await response.text()


async def chat_total(session: aiohttp.ClientSession, base: str) -> float:
    async with session.get(f"{base}/metrics", headers={"Connection": "close"}) as response:
        match = CHAT_TOTAL.search(await response.text())
        return float(match.group(1)) if match else 0.0


async def host_totals(session: aiohttp.ClientSession, base: str, expected: int) -> set[float]:
    """What several scrapes (several workers answer) say, once the last requests were counted
    (a worker counts a request just after sending its response)."""
    for _ in range(100):
        if await chat_total(session, base) == expected:
            break
        await asyncio.sleep(0.02)
    return {await chat_total(session, base) for _ in range(6)}


async def test_two_workers_share_metrics_replace_a_killed_one_and_drain_on_sigterm(gateway, redis_prefix):
    gw = await gateway(gateway_config(prefix=redis_prefix, tokens_per_second=40, completion_tokens=40),
                       "--workers", "2")
    first = gw.children()
    assert len(first) == 2
    async with aiohttp.ClientSession() as session:
        sent = 0
        while served_by(gw.log()) != {"1", "2"}:  # until both workers have answered some
            assert sent < 400, "one worker never got a connection"
            await asyncio.gather(*(faq(session, gw.base) for _ in range(8)))
            sent += 8
            await asyncio.sleep(0.05)  # the access log is written after the response
        # /metrics on any worker counts the whole host.
        assert await host_totals(session, gw.base, sent) == {float(sent)}

        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await gw.wait_until(lambda: len(gw.children() - first) == 1 and len(gw.children()) == 2,
                            "a replacement worker")
        (replacement,) = gw.children() - first
        await gw.wait_until(lambda: f"(pid {replacement}) serves" in gw.log(), "the replacement serves")
        assert re.search(rf"worker \d \(pid {victim}\) was killed by signal 9 \(SIGKILL\); starting a new one in "
                         r"0\.5s", gw.log())
        # The dead worker's requests still count, on whichever worker answers /metrics.
        await asyncio.gather(*(faq(session, gw.base) for _ in range(8)))
        sent += 8
        assert await host_totals(session, gw.base, sent) == {float(sent)}

        # Streams in flight on both workers (~1 s each), then SIGTERM: every one completes.
        async def stream() -> bytes:
            async with session.post(f"{gw.base}/v1/chat/completions", json=STREAM_Q,
                                    headers={**DEMO_KEY, "Connection": "close"}) as response:
                assert response.status == 200
                first_line = await response.content.readline()
                started.release()
                return first_line + await response.read()

        started = asyncio.Semaphore(0)
        streams = [asyncio.create_task(stream()) for _ in range(6)]
        for _ in streams:
            await started.acquire()
        workers = gw.children()
        gw.process.send_signal(signal.SIGTERM)
        bodies = await asyncio.gather(*streams)
    assert all(body.rstrip().endswith(b"data: [DONE]") and b'"error"' not in body for body in bodies)
    assert await asyncio.wait_for(gw.process.wait(), 30) == 0
    assert all(_state(pid) == b"Z" for pid in workers)  # gone (or only a zombie left to reap)
    assert "was killed" not in gw.log().split("stopping:")[-1]  # both drained and exited by themselves


def _state(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().split(b") ")[1][:1]
    except OSError:
        return b"Z"


def test_workers_with_memory_state_is_a_start_up_error_that_names_the_fix(capsys):
    assert main(["serve", "--config", str(ROOT / "config.yaml"), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: config\.yaml:\d+ state\.backend: 2 worker processes need shared state: set "
                     r"state\.backend: redis \(and state\.url\)", err)
