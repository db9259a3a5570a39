"""Cost of one admission and one settlement of the rate limiter: memory store vs Redis store.

    python tests/plugins/ratelimit/measure_ratelimit_store.py [--n 20000] [--redis redis://127.0.0.1:6379/0]

Drives ``RateLimitPlugin.proxy_admit`` / ``proxy_finished`` directly (no HTTP) with the shipped
config's limits (global, per key, per model, per upstream: requests, tokens, concurrency — eight
buckets a request), and prints wall time and CPU time per call: sequential (the round trip as one
request sees it) and with 64 requests in flight (what a busy worker pays). Not a test: numbers
depend on the machine. Keys live under a fresh prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis

import proxy
from plugins.ratelimit import RateLimitPlugin
from proxy.testing import PluginHarness

LIMITS = {
    "mode": "reject",
    "global": {"requests_per_second": 1e6, "burst": 1e6, "tokens_per_minute": 10**12},
    "per_key": {"requests_per_second": 1e6, "burst": 1e6, "tokens_per_minute": 10**12, "max_concurrent": 10**6},
    "models": {"deepseek-v3.2": {"requests_per_second": 1e6, "burst": 1e6, "tokens_per_minute": 10**12}},
    "upstreams": {"main": {"max_concurrent": 10**6}},
}
BODY = {"model": "deepseek-v3.2", "messages": [{"role": "user", "content": "Where is my parcel?"}], "max_tokens": 200}
SHOP = proxy.Principal("shop")


async def harness(store: Any = None) -> tuple[PluginHarness, RateLimitPlugin]:
    plugin = RateLimitPlugin(store, clock=proxy.LoopClock())
    h = PluginHarness(plugin, settings={"ratelimit": LIMITS})
    await h.start()
    return h, plugin


async def contexts(h: PluginHarness, n: int) -> list[proxy.RequestContext]:
    out = []
    for _ in range(n):
        ctx = await h.route(h.context(BODY, principal=SHOP))
        ctx.estimated_prompt_tokens()  # computed once per request by whoever asks first (the router, usually)
        out.append(ctx)
    return out


def finishing(h: PluginHarness, ctx: proxy.RequestContext) -> None:
    h.attempt(ctx, usage=proxy.Usage(30, 120))


async def maybe(result: Awaitable[None] | None) -> None:  # a hook's answer: awaited if awaitable
    if result is not None:
        await result


async def sequential(plugin: RateLimitPlugin, h: PluginHarness, n: int) -> tuple[list[float], float]:
    """One request at a time: each admission's wall time (µs, what the request waits), and the CPU
    per request (µs) of admission and settlement (a remote store settles in the background: it is
    counted over the whole run)."""
    waits = []
    ctxs = await contexts(h, n)
    cpu = time.process_time()
    for ctx in ctxs:
        began = time.perf_counter()
        await maybe(plugin.proxy_admit(ctx))
        waits.append((time.perf_counter() - began) * 1e6)
        finishing(h, ctx)
        plugin.proxy_finished(ctx)
    await asyncio.sleep(0.01)  # the last settlement
    return waits, (time.process_time() - cpu) / n * 1e6


async def concurrent(plugin: RateLimitPlugin, h: PluginHarness, n: int, width: int = 64) -> tuple[float, float]:
    """``width`` requests in flight: (admissions + settlements per second, CPU µs per request)."""
    pending = await contexts(h, n)

    async def worker() -> None:
        while pending:
            ctx = pending.pop()
            await maybe(plugin.proxy_admit(ctx))
            finishing(h, ctx)
            plugin.proxy_finished(ctx)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(width)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


def summary(values: list[float]) -> str:
    values = sorted(values)
    return (f"mean {statistics.fmean(values):7.1f}  p50 {values[len(values) // 2]:7.1f}  "
            f"p99 {values[int(len(values) * 0.99)]:7.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="requests per measurement")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    redis = Redis.from_url(args.redis)
    prefix = f"measure:ratelimit:{uuid.uuid4().hex}:"
    try:
        pings = []
        for _ in range(2000):
            began = time.perf_counter()
            await redis.ping()
            pings.append((time.perf_counter() - began) * 1e6)
        print(f"redis  PING round trip (µs)     {summary(pings)}")
        for name, store in (("memory", None), ("redis", "redis")):
            h, plugin = await harness()
            if store == "redis":
                plugin.use_store(plugin.shared_store(redis, prefix))
            await sequential(plugin, h, 500)  # warm up (scripts loaded, caches filled)
            waits, cpu = await sequential(plugin, h, args.n if name == "memory" else args.n // 4)
            print(f"{name:6} admission wall (µs)     {summary(waits)}")
            print(f"{name:6} one at a time: CPU {cpu:6.1f} µs per admission + settlement")
            rate, cpu = await concurrent(plugin, h, args.n)
            print(f"{name:6} 64 in flight:  CPU {cpu:6.1f} µs per admission + settlement, {rate:7.0f} requests/s")
            await h.stop()
    finally:
        keys = [key async for key in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
