#!/usr/bin/env python3
"""The fleet dimension of the benchmark: 1 and 2 workers, memory and Redis state, in the same run.

    python bench/fleet.py                         # throughput, latency, festival (~6 min)
    python bench/fleet.py --quick                 # a sanity run (~2 min)
    python bench/fleet.py --only festival --festival-duration 30 --json /tmp/fleet.json

Targets, each a ``floodgate serve`` of the full chain (``bench/configs.py``) in front of one
mock, beside the bare forwarder of the same run:

* ``1w memory``  — one process, ``state.backend: memory`` (pinned to CPU 1, as in ``bench/run.py``);
* ``1w redis``   — one process, ``state.backend: redis`` on the machine's Redis (pinned to CPU 1);
* ``2w redis``   — ``--workers 2`` on Redis state (not pinned: the workers may use both cores,
  which the mock, the load generator and Redis share).

Figures: closed-loop req/s; **CPU µs/req** of the gateway (supervisor and workers) and of Redis;
**Redis calls per request** (script calls in ``INFO commandstats``: the round trips, a
batched call counting once); at concurrency 1 the added latency.
**Redis state's added cost** = ``1w redis`` − ``1w memory`` (CPU per request, latency at
concurrency 1). The festival: open loop at ``--festival-rate`` streamed requests/s for
``--festival-duration`` s against ``2w redis`` and the forwarder (the control); TTFT p99 over the
forwarder's. Keys live under a fresh prefix, deleted at the end; every process is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import configs  # noqa: E402
from bench.procs import free_port, guarded, http, process_cpu, wait_ready  # noqa: E402
from bench.report import FESTIVAL_LATENCY_MS, fmt, machine, median, overhead_delta, progress  # noqa: E402
from bench.run import CHAT_PATH, FAST_MOCK, Bench, Stack  # noqa: E402
from bench.run import parse_args as bench_args  # noqa: E402

REDIS_URL = os.environ.get("FLOODGATE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
#: target -> (workers, state backend, pinned to the server CPU)
VARIANTS = {"1w memory": (1, "memory", True), "1w redis": (1, "redis", True), "2w redis": (2, "redis", False)}


class FleetBench:
    """The fleet phases, on :class:`bench.run.Bench`'s processes, load generators and meters."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.bench = Bench(bench_args(["--driver", args.driver, "--concurrency", str(args.concurrency)]
                                      + (["--no-pin"] if args.no_pin else [])), workdir)
        self.workdir = workdir
        self.prefix = f"fg-bench-{uuid.uuid4().hex[:8]}"
        self.results: dict[str, Any] = {}
        import redis

        self.redis = redis.Redis.from_url(REDIS_URL)
        self.redis_pid = _redis_pid(self.redis)

    # -- servers ----------------------------------------------------------------------------
    def start(self, name: str, mock_args: Sequence[str], targets: Sequence[str]) -> Stack:
        b = self.bench
        port = free_port()
        mock = b.procs.start(f"{name}-mock", [sys.executable, "-m", "proxy", "mock-upstream", "--port", str(port),
                                              "--models", ",".join(configs.MOCK_MODELS), *mock_args], b.load_cpu)
        stack = Stack(name, f"http://127.0.0.1:{port}")
        stack.procs["mock"] = mock
        wait_ready(mock, f"{stack.mock}/_mock/stats", f"{name} mock", self.workdir / f"{name}-mock.log")
        for target in targets:
            port = free_port()
            slug = target.replace(" ", "-")
            if target == "forwarder":
                argv = b.forwarder_argv(stack.mock, port)
                ready, cpu = "/v1/models", b.server_cpu
            else:
                workers, backend, pinned = VARIANTS[target]
                config = configs.full_config(f"{stack.mock}/v1", self.workdir / f"{name}-{slug}.db")
                config["server"]["event_loop"] = b.loop
                if backend == "redis":
                    config["state"] = {"backend": "redis", "url": REDIS_URL, "key_prefix": f"{self.prefix}-{slug}"}
                path = configs.write(configs.validated(config), self.workdir / f"{name}-{slug}.yaml")
                argv = [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port", str(port),
                        "--workers", str(workers)]
                ready, cpu = "/readyz", b.server_cpu if pinned else None
            proc = b.procs.start(f"{name}-{slug}", argv, cpu)
            stack.urls[target], stack.procs[target] = f"http://127.0.0.1:{port}", proc
            wait_ready(proc, stack.urls[target] + ready, f"{name} {target}", self.workdir / f"{name}-{slug}.log")
        for url in stack.urls.values():  # one request each: 200 (the chain's own checks are bench/run.py's)
            status, _, body = http("POST", url + CHAT_PATH, b.bodies[False].read_bytes(),
                                   {"Content-Type": "application/json", "Authorization": f"Bearer {b.key}"}, 30.0)
            if status != 200:
                raise RuntimeError(f"{name}: HTTP {status}: {body[:300]!r}")
        return stack

    # -- meters -----------------------------------------------------------------------------
    def _tree_cpu(self, stack: Stack, target: str) -> float:
        pid = stack.procs[target].pid
        return sum(process_cpu(p) for p in (pid, *_children(pid)))

    def _commands(self) -> int:
        """Script calls Redis ran: the stores' round trips (a batched call counts once; the commands
        a script runs inside Redis are not round trips and are left out)."""
        stats = self.redis.info("commandstats")
        return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))

    def measured(self, stack: Stack, target: str, run: Any) -> dict[str, Any]:
        """``run()`` with the target's CPU (process tree), Redis's CPU and Redis commands meanwhile."""
        cpu, redis_cpu, commands = self._tree_cpu(stack, target), self._redis_cpu(), self._commands()
        result = dict(run())
        requests = max(1, int(result.get("requests") or result.get("ok") or 1))
        result["cpu_us_per_req"] = (self._tree_cpu(stack, target) - cpu) / requests * 1e6
        result["redis_cpu_us_per_req"] = (self._redis_cpu() - redis_cpu) / requests * 1e6
        result["redis_calls_per_req"] = (self._commands() - commands) / requests
        return result

    def _redis_cpu(self) -> float:
        return process_cpu(self.redis_pid) if self.redis_pid else 0.0

    # -- phases -----------------------------------------------------------------------------
    def throughput_latency(self) -> None:
        a = self.args
        targets = ("forwarder", *VARIANTS)
        stack = self.start("fleet", FAST_MOCK, targets)
        b = self.bench
        try:
            for target in targets:  # warm-up, discarded
                b.closed(stack.urls[target], 2.0)
            rounds = []
            for r in range(a.rounds):
                rounds.append({t: self.measured(stack, t, lambda t=t: b.closed(stack.urls[t], a.duration, target=t))
                               for t in targets})
                progress(f"fleet throughput round {r + 1}/{a.rounds}: " + ", ".join(
                    f"{t} {rounds[-1][t]['rps']:.0f}/s {rounds[-1][t]['cpu_us_per_req']:.0f} µs" for t in targets))
            self.results["throughput"] = {"concurrency": a.concurrency, "duration_s": a.duration, "rounds": rounds}
            sequential = {t: stack.urls[t] for t in ("forwarder", "1w memory", "1w redis")}
            lat = []
            for r in range(a.rounds):
                sub = Stack(stack.name, stack.mock, dict(sequential), {t: stack.procs[t] for t in sequential})
                lat.append(b.interleaved(sub, "sequential", "--requests", str(a.latency_requests), "--warmup", "200",
                                         "--block", "50"))
                progress(f"fleet latency round {r + 1}/{a.rounds}: " + ", ".join(
                    f"{t} p50 {lat[-1][t]['latency_ms']['p50']:.3f} ms" for t in sequential))
            self.results["latency"] = {"requests": a.latency_requests, "rounds": lat}
        finally:
            b.stop_stack(stack)

    def festival(self) -> None:
        a = self.args
        mock = ("--latency-ms", f"{FESTIVAL_LATENCY_MS:g}", "--tps", "0", "--completion-tokens", "24")
        targets = ("forwarder", *a.festival_targets.split(","))
        stack = self.start("festival", mock, targets)
        b = self.bench
        try:
            out: dict[str, Any] = {"rate": a.festival_rate, "duration_s": a.festival_duration}
            for target in targets:
                before = http("GET", stack.urls[target] + "/metrics")[2].decode() if target != "forwarder" else ""
                data = self.measured(stack, target, lambda t=target: b._load(
                    "open", stack.urls[t], "--rate", f"{a.festival_rate:g}", "--duration", f"{a.festival_duration:g}",
                    "--stream", "--timeout", "60", stream=True, timeout=a.festival_duration + 180))
                if target != "forwarder":
                    data["overhead"] = overhead_delta(before, http("GET", stack.urls[target] + "/metrics")[2].decode())
                out[target] = data
                progress(f"festival {target}: ok {data['ok']}, errors {sum(data['errors'].values())}, "
                         f"unsent {data['unsent']}, TTFT p99 {fmt(data['ttft_ms']['p99'])} ms")
            self.results["festival"] = out
        finally:
            b.stop_stack(stack)

    def cleanup(self) -> None:
        keys = list(self.redis.scan_iter(match=f"{self.prefix}-*"))
        if keys:
            self.redis.delete(*keys)
        self.redis.close()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _redis_pid(client: Any) -> int | None:
    try:
        return int(client.info("server")["process_id"])
    except Exception:  # a remote Redis: its CPU is not ours to read
        return None


def render(results: dict[str, Any]) -> str:
    lines = ["Fleet — full chain; 1w = one process, 2w = --workers 2; medians over rounds"]
    thr = results.get("throughput")
    if thr:
        lines.append(f"Throughput — closed loop, {thr['concurrency']} connections, {thr['duration_s']:g} s per target "
                     "per round")
        lines.append(f"  {'target':<12}{'req/s':>8}{'× fwd':>8}{'p99 ms':>9}{'CPU µs/req':>12}{'Redis µs/req':>14}"
                     f"{'Redis calls/req':>16}")
        rounds = thr["rounds"]
        for t in rounds[0]:
            rps = median([r[t]["rps"] for r in rounds])
            ratio = median([r[t]["rps"] / r["forwarder"]["rps"] for r in rounds])
            lines.append(f"  {t:<12}{fmt(rps, 0):>8}{fmt(ratio):>8}{fmt(median([r[t]['p99_ms'] for r in rounds])):>9}"
                         f"{fmt(median([r[t]['cpu_us_per_req'] for r in rounds]), 0):>12}"
                         f"{fmt(median([r[t]['redis_cpu_us_per_req'] for r in rounds]), 0):>14}"
                         f"{fmt(median([r[t]['redis_calls_per_req'] for r in rounds])):>16}")
        mem = median([r["1w memory"]["cpu_us_per_req"] for r in rounds])
        red = median([r["1w redis"]["cpu_us_per_req"] for r in rounds])
        if mem is not None and red is not None:
            lines.append(f"  Redis state's added gateway CPU per request (1w redis − 1w memory): {red - mem:+.0f} µs")
    lat = results.get("latency")
    if lat:
        rounds = lat["rounds"]
        lines.append(f"Latency at concurrency 1 — {lat['requests']} sequential requests per target per round")
        for t in rounds[0]:
            p50 = median([r[t]["latency_ms"]["p50"] for r in rounds])
            p99 = median([r[t]["latency_ms"]["p99"] for r in rounds])
            added = median([r[t]["latency_ms"]["p50"] - r["forwarder"]["latency_ms"]["p50"] for r in rounds])
            lines.append(f"  {t:<12} p50 {fmt(p50, 3)} ms  p99 {fmt(p99, 3)} ms  added p50 {fmt(added, 3, True)} ms")
    fest = results.get("festival")
    if fest:
        fwd = fest["forwarder"]
        lines.append(f"Festival — {fest['rate']:g} streamed req/s for {fest['duration_s']:g} s (open loop), full chain")
        for name, d in fest.items():
            if not isinstance(d, dict):
                continue
            over = (f"  TTFT p99 over the forwarder {d['ttft_ms']['p99'] - fwd['ttft_ms']['p99']:+.1f} ms, proxy "
                    f"overhead p99 {fmt((d.get('overhead') or {}).get('p99_ms'))} ms" if d is not fwd else "")
            lines.append(f"  {name:<12} ok {d['ok']}  errors {sum(d['errors'].values())}  unsent {d['unsent']}  "
                         f"TTFT p50 {fmt(d['ttft_ms']['p50'])} ms  p99 {fmt(d['ttft_ms']['p99'])} ms  "
                         f"CPU {fmt(d['cpu_us_per_req'], 0)} µs/req  Redis {fmt(d['redis_cpu_us_per_req'], 0)} µs/req"
                         + over)
        if "1w memory" in fest and "1w redis" in fest:  # open loop: each request pays more of its own round trip
            added = fest["1w redis"]["cpu_us_per_req"] - fest["1w memory"]["cpu_us_per_req"]
            lines.append(f"  Redis state's added gateway CPU per stream at {fest['rate']:g}/s (1w redis − 1w memory): "
                         f"{added:+.0f} µs")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=float, help="closed-loop seconds per target per round (default 10)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency-requests", type=int)
    p.add_argument("--festival-rate", type=float, default=500.0)
    p.add_argument("--festival-duration", type=float)
    p.add_argument("--festival-targets", default="2w redis", help="comma-separated, of: " + ", ".join(VARIANTS))
    p.add_argument("--only", default="throughput,festival", help="throughput (with latency), festival")
    p.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    q = args.quick
    for key, value in {"rounds": 1 if q else 2, "duration": 3.0 if q else 10.0,
                       "latency_requests": 300 if q else 1000, "festival_duration": 10.0 if q else 60.0}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="floodgate-fleet-"))
    fleet = FleetBench(args, workdir)
    if fleet.bench.pin:
        os.sched_setaffinity(0, {0})
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    fleet.results["machine"] = machine()
    fleet.results["options"] = vars(args)
    def phases() -> None:
        chosen = set(args.only.split(","))
        if "throughput" in chosen:
            fleet.throughput_latency()
        if "festival" in chosen:
            fleet.festival()

    def cleanup() -> None:
        fleet.bench.procs.stop_all()
        fleet.cleanup()
        signal.signal(signal.SIGTERM, previous)

    status = guarded(phases, cleanup, progress)
    text = render(fleet.results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({**fleet.results, "report": text}, indent=2, default=str))
    if args.keep or status:
        progress(f"logs and configs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
