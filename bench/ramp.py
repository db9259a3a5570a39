"""The festival-overload load generator: an open loop whose rate ramps from ``--low`` to ``--high``
times ``--capacity`` requests/s and back over ``--seconds`` (a triangle), streamed chat requests, one
record per request, and the gateway's ``/-/status`` read every second.

    python -m bench.ramp --url http://127.0.0.1:8080 --capacity 11 --seconds 90 \\
        --key bulk=fg-bench-bulk-key --key vip=fg-bench-vip-key --admin-key fg-... --out ramp.json

The mix: one request in ten asks a question an FAQ rule knows (in too many words for its strict
match), one in five comes from the ``vip`` key (priority), the rest from ``bulk``. Each record:
``[sent_s, load (× capacity), key, status, ttft_s, total_s, degraded, deployment, model, faq]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import orjson

PLAIN = "你好，我昨天下的订单 20241105-88231 现在到哪里了？麻烦帮我看一下，谢谢。"
FAQ = "你好,我上周退的那件外套,退款多久能到账?订单号 20241105-88231,麻烦尽快处理一下。"
MODEL = "deepseek-v3.2"


def load_at(t: float, seconds: float, low: float, high: float) -> float:
    """The offered load (× capacity) ``t`` seconds in: ``low`` → ``high`` at half time → ``low``."""
    half = seconds / 2
    return low + (high - low) * (1 - abs(t - half) / half)


def schedule(capacity: float, seconds: float, low: float, high: float, step: float = 0.001) -> list[float]:
    """Send times: the n-th request when the integral of the rate reaches n."""
    times, total, t = [], 0.0, 0.0
    while t < seconds:
        total += capacity * load_at(t, seconds, low, high) * step
        while total >= len(times) + 1:
            times.append(t)
        t += step
    return times


async def one(session: aiohttp.ClientSession, url: str, key: str, name: str, faq: bool, sent: float,
              load: float, start: float, records: list[list[Any]]) -> None:
    body = orjson.dumps({"model": MODEL, "stream": True,
                         "messages": [{"role": "user", "content": FAQ if faq else PLAIN}]})
    ttft = None
    status = 0
    headers: Any = {}
    try:
        async with session.post(url + "/v1/chat/completions", data=body, headers={
                "Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as response:
            status, headers = response.status, response.headers
            async for line in response.content:
                if ttft is None and line.startswith(b"data: ") and b'"content":"' in line \
                        and b'"content":""' not in line:
                    ttft = time.monotonic() - start - sent
            await response.release()
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = -1
        headers = {"x-error": type(exc).__name__}
    records.append([round(sent, 4), round(load, 3), name, status, ttft, time.monotonic() - start - sent,
                    headers.get("x-floodgate-degraded", ""), headers.get("x-floodgate-deployment", ""),
                    headers.get("x-floodgate-model", ""), bool(headers.get("x-floodgate-short-circuit"))])


async def poll(session: aiohttp.ClientSession, url: str, admin: str, start: float, out: list[Any]) -> None:
    while True:
        try:
            async with session.get(url + "/-/status", headers={"Authorization": f"Bearer {admin}"}) as response:
                doc = await response.json()
            out.append([round(time.monotonic() - start, 2), doc])
        except (aiohttp.ClientError, ValueError, TimeoutError):
            pass
        await asyncio.sleep(1.0)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    keys = dict(pair.split("=", 1) for pair in args.key)
    times = schedule(args.capacity, args.seconds, args.low, args.high)
    records: list[list[Any]] = []
    status: list[Any] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=args.timeout)) as session:
        start = time.monotonic()
        poller = asyncio.ensure_future(poll(session, args.url, args.admin_key, start, status))
        tasks = []
        for i, at in enumerate(times):
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            name = "vip" if i % 5 == 0 else "bulk"
            tasks.append(asyncio.ensure_future(one(session, args.url, keys[name], name, i % 10 == 7, at,
                                                   load_at(at, args.seconds, args.low, args.high), start, records)))
        await asyncio.gather(*tasks)
        await asyncio.sleep(1.0)
        poller.cancel()
    return {"capacity": args.capacity, "seconds": args.seconds, "low": args.low, "high": args.high,
            "requests": sorted(records), "status": status}


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the gateway's base URL")
    p.add_argument("--capacity", type=float, required=True, help="the upstream's capacity, requests/s")
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--low", type=float, default=0.5)
    p.add_argument("--high", type=float, default=3.0)
    p.add_argument("--key", action="append", default=[], metavar="NAME=KEY", help="bulk=... and vip=...")
    p.add_argument("--admin-key", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--out", required=True, help="write the records here (JSON)")
    args = p.parse_args(argv)
    data = asyncio.run(main(args))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(data, f)
    print(json.dumps({"requests": len(data["requests"]), "status_samples": len(data["status"])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
