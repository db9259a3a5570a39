"""What Redis state adds to a request's CPU, measured inside one process: the benchmark's full chain of
plugins driven through their hooks (no HTTP, no upstream), memory state against Redis state, rounds
alternating (A B A B …) so the machine's drift falls on both.

Each request is authenticated, short-circuit-checked, routed, admitted, tried once (usage recorded)
and finished, as the gateway does it; ``--concurrency`` requests are in flight at a time. The
Redis rounds do their real I/O to the machine's Redis on the pipe in this process, so their CPU
per request is everything Redis state costs the gateway: the stores, the pipe, its socket calls.
The ledger is off in both (its journal is the same work either way). The garbage collector is
tuned as the gateway tunes it once it listens (:func:`proxy.server.run.tune_gc`). ::

    python bench/state_cost.py                     # 6 rounds x 6,000 requests, concurrency 64
    python bench/state_cost.py --concurrency 1     # one request at a time (no batching)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import redis

import proxy
from bench import configs
from bench.fleet import REDIS_URL
from plugins.auth import AuthPlugin
from plugins.cost import CostPlugin
from plugins.faq import FaqPlugin
from plugins.ratelimit import RateLimitPlugin
from plugins.retry import RetryPlugin
from plugins.router import RouterPlugin
from proxy.config.schema import StateSettings
from proxy.server.run import tune_gc
from proxy.testing import PluginHarness


def chain_config(backend: str, prefix: str) -> dict[str, Any]:
    config = configs.validated(configs.full_config("http://127.0.0.1:9/v1", "/dev/null"))
    config["plugins"]["cost"]["ledger"] = {"enabled": False}
    if backend == "redis":
        config["state"] = {"backend": "redis", "url": REDIS_URL, "key_prefix": prefix}
    return config


async def one_round(backend: str, prefix: str, requests: int, concurrency: int) -> dict[str, float]:
    config = chain_config(backend, prefix)
    state = proxy.SharedState(StateSettings(**config["state"]) if backend == "redis" else None)
    plugins = [AuthPlugin(), FaqPlugin(), RouterPlugin(), RateLimitPlugin(clock=proxy.LoopClock()),
               RetryPlugin(clock=proxy.LoopClock()), CostPlugin(clock=proxy.LoopClock())]
    h = PluginHarness(*plugins, config=config, state=state)
    await h.start()
    body = orjson.loads(configs.chat_body())
    headers = {"authorization": f"Bearer {configs.load_key()}"}
    usage = proxy.Usage(60, 40)

    async def request() -> None:
        ctx = h.context(body, headers=headers)
        await h.authenticate(ctx)
        if await h.hooks.short_circuit(ctx) is not None:
            raise RuntimeError("the benchmark prompt matched an FAQ rule")
        await h.admit(ctx)
        h.attempt(ctx, usage=usage)
        await h.finished(ctx)

    async def client(n: int) -> None:
        for _ in range(n):
            await request()

    await asyncio.gather(*(client(20) for _ in range(concurrency)))  # warm-up: connections, caches, scripts
    pipe = state.pipe if backend == "redis" else None
    writes = pipe.writes if pipe else 0
    thresholds = gc.get_threshold()
    tune_gc()  # as the gateway does once it listens: start-up objects frozen, young generation larger
    cpu, wall = time.process_time(), time.perf_counter()
    share, extra = divmod(requests, concurrency)
    await asyncio.gather(*(client(share + (i < extra)) for i in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    cost = next(p for p in plugins if isinstance(p, CostPlugin))
    await cost.settled()
    result = {"cpu_us_per_req": cpu / requests * 1e6, "wall_us_per_req": wall / requests * 1e6,
              "writes_per_req": ((pipe.writes - writes) / requests) if pipe else 0.0}
    await h.stop()
    await state.close()
    gc.unfreeze()  # the next round starts from the same collector settings
    gc.set_threshold(*thresholds)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=6000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args()
    prefix = f"fg-bench-state-{uuid.uuid4().hex[:8]}"
    runs: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
    factory = None
    if a.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    try:
        for i in range(a.rounds):
            for backend in ("memory", "redis") if i % 2 == 0 else ("redis", "memory"):
                with asyncio.Runner(loop_factory=factory) as runner:
                    r = runner.run(one_round(backend, prefix, a.requests, a.concurrency))
                runs[backend].append(r)
                print(f"round {i + 1}/{a.rounds} {backend:6}: {r['cpu_us_per_req']:6.1f} µs CPU/req, "
                      f"{r['writes_per_req']:.2f} writes/req", file=sys.stderr)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    memory = statistics.median(r["cpu_us_per_req"] for r in runs["memory"])
    shared = statistics.median(r["cpu_us_per_req"] for r in runs["redis"])
    added = [r["cpu_us_per_req"] - m["cpu_us_per_req"] for r, m in zip(runs["redis"], runs["memory"])]
    summary = {"concurrency": a.concurrency, "requests": a.requests, "rounds": a.rounds, "loop": a.loop,
               "memory_cpu_us_per_req": memory, "redis_cpu_us_per_req": shared,
               "added_cpu_us_per_req": statistics.median(added), "added_per_round": added,
               "writes_per_req": statistics.median(r["writes_per_req"] for r in runs["redis"])}
    print(f"plugin chain, concurrency {a.concurrency}, {a.loop}: memory {memory:.0f} µs/req, "
          f"Redis {shared:.0f} µs/req; Redis state adds {summary['added_cpu_us_per_req']:+.0f} µs/req "
          f"(median of the rounds' differences; per round: {', '.join(f'{d:+.0f}' for d in added)}); "
          f"{summary['writes_per_req']:.2f} pipe writes/req")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
