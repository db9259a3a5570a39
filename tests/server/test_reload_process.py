"""Reloads of a running ``floodgate serve`` (one process, or a supervisor and two workers):
SIGHUP and ``floodgate reload``, a broken config, a changed FAQ answer under load."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from dataclasses import dataclass, field

import aiohttp
import pytest
from fleet_helpers import DEMO_KEY, gateway_config

pytestmark = pytest.mark.e2e

ASK = {"model": "auto", "messages": [{"role": "user", "content": "营业时间"}]}
STREAM = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "我的快递到哪了"}]}


@dataclass
class Load:
    """Clients that keep asking (FAQ answers and streams) until told to stop; what they saw."""

    answers: list[str] = field(default_factory=list)
    streams: int = 0
    failures: list[str] = field(default_factory=list)

    async def client(self, session: aiohttp.ClientSession, base: str, stop: asyncio.Event, stream: bool) -> None:
        while not stop.is_set():
            try:
                async with session.post(f"{base}/v1/chat/completions", json=STREAM if stream else ASK,
                                        headers=DEMO_KEY) as response:
                    body = await response.read()
                    if response.status != 200:
                        self.failures.append(f"{response.status} {body[:200]!r}")
                    elif stream:
                        if not body.rstrip().endswith(b"data: [DONE]") or b'"error"' in body:
                            self.failures.append(f"broken stream {body[-200:]!r}")
                        self.streams += 1
                    else:
                        import orjson
                        self.answers.append(orjson.loads(body)["choices"][0]["message"]["content"])
            except aiohttp.ClientError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")


async def ask(session: aiohttp.ClientSession, base: str) -> str:
    async with session.post(f"{base}/v1/chat/completions", json=ASK,
                            headers={**DEMO_KEY, "Connection": "close"}) as response:
        assert response.status == 200
        return (await response.json())["choices"][0]["message"]["content"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_reloads_under_load_fail_no_request(gateway, redis_prefix, tmp_path, workers):
    pid_file = tmp_path / "floodgate.pid"
    texts = [gateway_config(prefix=redis_prefix, pid_file=pid_file, answer=f"答案 {n}", tokens_per_second=60)
             for n in range(4)]
    gw = await gateway(texts[0], "--workers", str(workers))
    load, stop = Load(), asyncio.Event()
    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(load.client(session, gw.base, stop, stream=i % 2 == 0)) for i in range(6)]
        for n in (1, 2, 3):
            await asyncio.sleep(0.6)  # streams (~0.4 s) are in flight when the signal arrives
            gw.config.write_text(texts[n], encoding="utf-8")
            want = gw.log().count("reloaded: now serving") + workers
            gw.process.send_signal(signal.SIGHUP)
            await gw.wait_until(lambda want=want: gw.log().count("reloaded: now serving") == want, f"reload {n}")
            assert {await ask(session, gw.base) for _ in range(2 * workers)} == {f"答案 {n}"}
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
    assert load.failures == []
    assert load.streams > 5 and {"答案 0", "答案 3"} <= set(load.answers)
    print(f"\nworkers={workers}: {len(load.answers) + load.streams} requests across 3 reloads, "
          f"{len(load.failures)} failed")


async def test_a_broken_config_keeps_serving_then_floodgate_reload_applies_a_fixed_one(gateway, redis_prefix,
                                                                                      tmp_path):
    pid_file = tmp_path / "floodgate.pid"
    gw = await gateway(gateway_config(prefix=redis_prefix, pid_file=pid_file, tokens_per_second=40,
                                      completion_tokens=40), "--workers", "2")
    broken = gateway_config(prefix=redis_prefix, pid_file=pid_file, answer="新的答案").replace(
        "  shutdown_timeout: 30", "  shutdown_timeout: -5").replace("pool_size: 200", "pool_sise: 200")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.base}/v1/chat/completions", json=STREAM, headers=DEMO_KEY) as streaming:
            assert (await streaming.content.readline()).startswith(b"data: ")

            gw.config.write_text(broken, encoding="utf-8")
            gw.process.send_signal(signal.SIGHUP)
            await gw.wait_until(lambda: "reload refused (2 errors)" in gw.log(), "the refusal")
            log = gw.log()
            assert re.search(r"reload refused: config\.yaml:\d+ server\.shutdown_timeout: must be greater than 0", log)
            assert re.search(r"reload refused: config\.yaml:\d+ upstreams\.main\.pool_sise: unknown key \(did you "
                             r"mean 'pool_size'\?\)", log)
            assert "still serving configuration version 1" in log
            assert "我们的在线客服" in await ask(session, gw.base)

            # `floodgate reload` checks first (plugins' blocks too): reported, nothing is signalled.
            fixed = broken.replace("pool_sise", "pool_size").replace("shutdown_timeout: -5", "shutdown_timeout: 30")
            gw.config.write_text(fixed.replace("max_retries: 2", "max_retrys: 2"), encoding="utf-8")
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", "reload", "--config", str(gw.config), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(cli.communicate(), 30)
            assert cli.returncode == 1 and b"plugins.retry.max_retrys: unknown key" in err and b"not reloaded" in err
            assert "version 2" not in gw.log()

            gw.config.write_text(fixed, encoding="utf-8")
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", "reload", "--config", str(gw.config), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(cli.communicate(), 30)
            assert cli.returncode == 0, err
            assert f"sent SIGHUP to the gateway (pid {gw.process.pid})".encode() in out
            await gw.wait_until(lambda: gw.log().count("serves configuration version 2") == 2, "both workers switch")
            assert {await ask(session, gw.base) for _ in range(6)} == {"新的答案"}
            rest = await streaming.read()  # the stream that began before all this completes on the old config
        assert rest.rstrip().endswith(b"data: [DONE]") and b'"error"' not in rest
