#!/usr/bin/env python3
"""Floodgate's benchmark: Floodgate against a bare aiohttp forwarder, in the same run.

    python bench/run.py                 # throughput, latency, stream, festival (~7 min)
    python bench/run.py --quick         # 1 short round of each (~2 min)
    python bench/run.py --memory        # also the 200,000-request memory check
    python bench/run.py --only throughput,latency --rounds 5 --json /tmp/bench.json
    python bench/run.py --only overload # the festival overload: 0.5x -> 3x -> 0.5x, ladder off/on (~4 min)

Every server is its own process on a free loopback port: the built-in mock upstream
(``floodgate mock-upstream``), the bare forwarder (``bench/forwarder.py``, the floor),
Floodgate with no plugins and Floodgate with the full chain (``bench/configs.py``).
On a machine with 2+ CPUs the server under test runs on CPU 1 and the mock plus the
load generator on CPU 0. Targets are driven in turn (forwarder, no plugins, full,
forwarder, ...) for several rounds; the report gives medians over rounds and ratios
to the forwarder of the same round, never one absolute figure as a fact. Every
process started is stopped by pid at the end, on errors and on Ctrl-C.
See bench/README.md for what each figure and target means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import configs, flaky, overload, peers  # noqa: E402
from bench.procs import (  # noqa: E402
    Processes,
    cpu_snapshot,
    event_loop,
    foreign_cpu,
    free_port,
    guarded,
    http,
    process_cpu,
    rss_mb,
    wait_ready,
)
from bench.profiles import summarize_profile  # noqa: E402
from bench.report import (  # noqa: E402
    FESTIVAL_LATENCY_MS,
    STREAM_TOKENS,
    TARGETS,
    Report,
    fmt,
    machine,
    overhead_delta,
    progress,
    served,
    status_delta,
)

CHAT_PATH = "/v1/chat/completions"
PHASES = ("throughput", "latency", "stream", "festival", "flaky", "overload", "memory")
DEFAULT_PHASES = ("throughput", "latency", "stream", "festival", "flaky")
# The mock of the throughput, latency and memory phases: zero latency, short answers.
FAST_MOCK = ("--tps", "0", "--completion-tokens", "16")

# -- a running set of servers ------------------------------------------------------------------

@dataclass
class Stack:
    """One mock and the targets in front of it."""

    name: str
    mock: str  # origin, e.g. http://127.0.0.1:PORT
    urls: dict[str, str] = field(default_factory=dict)  # target -> origin
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


class Bench:
    """The phases of one run; raw results accumulate in ``results`` (what ``--json`` writes)."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        cpus = os.cpu_count() or 1
        self.pin = not args.no_pin and cpus >= 2 and hasattr(os, "sched_setaffinity")
        self.server_cpu = 1 if self.pin else None
        self.load_cpu = 0 if self.pin else None
        self.procs = Processes(workdir, self.pin)
        self.wrk = shutil.which("wrk") if args.driver in ("auto", "wrk") else None
        if args.driver == "wrk" and not self.wrk:
            raise SystemExit("--driver wrk: wrk is not installed (apt-get install -y wrk)")
        self.py_spy = shutil.which("py-spy")
        # Floodgate and the floor run on the same event loop: the ratio compares their work, not two loops.
        self.loop = event_loop(args.loop)
        self.key = configs.load_key()
        self.bodies = {False: workdir / "body.json", True: workdir / "body-stream.json"}
        for stream, path in self.bodies.items():
            path.write_bytes(configs.chat_body(stream=stream))
        self.results: dict[str, Any] = {}
        # Other gateways join the throughput and latency phases (installed now, before any phase).
        self.peers = tuple(args.peers)
        if "litellm" in self.peers:
            peers.litellm_python()

    # -- servers ----------------------------------------------------------------------------
    def start_stack(self, name: str, mock_args: Sequence[str], targets: Sequence[str]) -> Stack:
        port = free_port()
        mock = self.procs.start(f"{name}-mock", [sys.executable, "-m", "proxy", "mock-upstream", "--port",
                                                 str(port), "--models", ",".join(configs.MOCK_MODELS),
                                                 *mock_args], self.load_cpu)
        stack = Stack(name, f"http://127.0.0.1:{port}")
        stack.procs["mock"] = mock
        wait_ready(mock, f"{stack.mock}/_mock/stats", f"{name} mock", self.workdir / f"{name}-mock.log")
        if set(targets) - {"forwarder"}:  # validated against the loader a fresh `floodgate serve` will use
            self.procs.run([sys.executable, "-m", "bench.configs", "--upstream", f"{stack.mock}/v1", "--out",
                            str(self.workdir), "--prefix", f"{name}-", "--event-loop", self.loop], None, 120)
        for target in targets:
            port = free_port()
            env = None
            if target == "forwarder":
                argv = self.forwarder_argv(stack.mock, port)
                ready = "/v1/models"
            elif target == "lean":
                argv = [sys.executable, str(REPO / "bench" / "lean_forwarder.py"), "--upstream", stack.mock,
                        "--port", str(port), "--loop", self.loop]
                ready = "/v1/models"
            elif target == "litellm":
                argv, env = peers.litellm_argv(self.workdir, name, f"{stack.mock}/v1", port, self.procs.env)
                ready = "/health/liveliness"
            else:
                path = self.workdir / f"{name}-{target}.yaml"
                argv = [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port", str(port)]
                ready = "/readyz"
            proc = self.procs.start(f"{name}-{target}", argv, self.server_cpu, env)
            stack.urls[target], stack.procs[target] = f"http://127.0.0.1:{port}", proc
            wait_ready(proc, stack.urls[target] + ready, f"{name} {target}",
                       self.workdir / f"{name}-{target}.log", timeout=180.0 if target in peers.PEERS else 60.0)
        self.preflight(stack)
        return stack

    def forwarder_argv(self, upstream: str, port: int) -> list[str]:
        return [sys.executable, str(REPO / "bench" / "forwarder.py"), "--upstream", upstream, "--port", str(port),
                "--pool-size", str(configs.POOL_SIZE), "--loop", self.loop]

    def stop_stack(self, stack: Stack) -> None:
        for proc in reversed(list(stack.procs.values())):
            Processes.stop(proc)
            if proc in self.procs.children:
                self.procs.children.remove(proc)

    def preflight(self, stack: Stack) -> None:
        """One request through each target: 200, and the full chain really ran its plugins."""
        for target, url in stack.urls.items():
            status, headers, body = http("POST", url + CHAT_PATH, self.bodies[False].read_bytes(),
                                         {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"},
                                         timeout=30.0)
            if status != 200:
                raise RuntimeError(f"{stack.name} {target}: HTTP {status}: {body[:300]!r}")
            if target == "full":
                if "x-floodgate-short-circuit" in headers:
                    raise RuntimeError("the benchmark prompt matched an FAQ rule; it must match none")
                if headers.get("x-floodgate-route") != "simple" or "x-ratelimit-limit-requests" not in headers:
                    raise RuntimeError(f"full chain did not route/limit as configured: {headers}")
                status, _, _ = http("POST", url + CHAT_PATH, self.bodies[False].read_bytes(),
                                    {"Content-Type": "application/json", "Authorization": "Bearer fg-wrong-key-x"})
                if status != 401:
                    raise RuntimeError(f"full chain accepted a wrong key (HTTP {status})")

    # -- load generators --------------------------------------------------------------------
    def metered(self, stack: Stack, fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``fn(*args)`` plus ``foreign_cpu`` (the share of the machine other processes took meanwhile)
        and ``cpu_s`` (CPU seconds each server of the stack used meanwhile, by name)."""
        pids = [p.pid for p in stack.procs.values()]
        before = cpu_snapshot(pids)
        cpu = {name: process_cpu(proc.pid) for name, proc in stack.procs.items()}
        result = fn(*args, **kwargs)
        result["foreign_cpu"] = foreign_cpu(before, cpu_snapshot(pids))
        result["cpu_s"] = {name: process_cpu(proc.pid) - cpu[name] for name, proc in stack.procs.items()}
        return result

    def interleaved(self, stack: Stack, mode: str, *extra: str, stream: bool = False) -> dict[str, dict[str, Any]]:
        """One load-generator run taking turns over every target of the stack; results by target."""
        urls = [url + CHAT_PATH for url in stack.urls.values()]
        argv = [sys.executable, "-m", "bench.load", mode, *(a for url in urls for a in ("--url", url)),
                "--body", str(self.bodies[stream]), "--header", f"Authorization: Bearer {self.key}", *extra]
        data = self.metered(stack, lambda: json.loads(self.procs.run(argv, self.load_cpu, 1800)
                                                      .strip().splitlines()[-1]))
        by_target = {}
        for target, url in stack.urls.items():
            by_target[target] = {**data["by_url"][url + CHAT_PATH], "foreign_cpu": data["foreign_cpu"],
                                 "cpu_s": data["cpu_s"]}
        return by_target

    def _load(self, mode: str, url: str, *extra: str, stream: bool = False, timeout: float) -> dict[str, Any]:
        argv = [sys.executable, "-m", "bench.load", mode, "--url", url + CHAT_PATH,
                "--body", str(self.bodies[stream]), "--header", f"Authorization: Bearer {self.key}", *extra]
        return json.loads(self.procs.run(argv, self.load_cpu, timeout).strip().splitlines()[-1])

    def closed(self, url: str, duration: float, *, max_requests: int | None = None,
               target: str | None = None) -> dict[str, Any]:
        """Closed loop at --concurrency: {rps, p50_ms, p99_ms, requests, errors, driver, target}."""
        c = self.args.concurrency
        if self.wrk:
            argv = [self.wrk, "-t1", f"-c{c}", f"-d{duration:g}s", "--timeout", "30s", "-s",
                    str(REPO / "bench" / "wrk" / "chat.lua"), url + CHAT_PATH, "--",
                    str(self.bodies[False]), self.key]
            env = {"BENCH_MAX_REQUESTS": str(max_requests)} if max_requests else None
            out = self.procs.run(argv, self.load_cpu, duration + 60, env=env)
            line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
            data = json.loads(line[len("BENCH_JSON "):])
            seconds = data["duration_us"] / 1e6
            errors = {k: v for k, v in data["errors"].items() if v}
            return {"driver": "wrk", "target": target, "requests": data["requests"], "seconds": seconds,
                    "rps": data["requests"] / seconds, "p50_ms": data["latency_us"]["p50"] / 1000,
                    "p99_ms": data["latency_us"]["p99"] / 1000, "errors": errors}
        extra = ["--concurrency", str(c), "--duration", f"{duration:g}"]
        if max_requests:
            extra += ["--requests", str(max_requests)]
        data = self._load("closed", url, *extra, timeout=duration + 60)
        return {"driver": "python", "target": target, "requests": data["requests"], "seconds": data["seconds"],
                "rps": data["rps"],
                "p50_ms": data["latency_ms"]["p50"], "p99_ms": data["latency_ms"]["p99"], "errors": data["errors"]}

    # -- phases -----------------------------------------------------------------------------
    def phase_throughput_latency(self, phases: set[str]) -> None:
        a = self.args
        targets = (*TARGETS, *self.peers)
        stack = self.start_stack("fast", FAST_MOCK, targets)
        try:
            for target in targets:  # warm-up: imports, pools, caches; discarded
                self.closed(stack.urls[target], min(2.0, a.duration))
            if "throughput" in phases:
                rounds: list[dict[str, Any]] = []
                for r in range(a.rounds):
                    rounds.append({t: self.metered(stack, self.closed, stack.urls[t], a.duration, target=t)
                                   for t in targets})
                    progress(f"throughput round {r + 1}/{a.rounds}: " + ", ".join(
                        f"{t} {rounds[-1][t]['rps']:.0f}/s" for t in targets))
                self.results["throughput"] = {"concurrency": a.concurrency, "duration_s": a.duration,
                                              "rounds": rounds}
            if "latency" in phases:
                rounds = []
                for r in range(a.rounds):
                    rounds.append(self.interleaved(stack, "sequential", "--requests", str(a.latency_requests),
                                                   "--warmup", "200", "--block", "50"))
                    progress(f"latency round {r + 1}/{a.rounds}: " + ", ".join(
                        f"{t} p50 {rounds[-1][t]['latency_ms']['p50']:.3f} ms" for t in targets))
                self.results["latency"] = {"requests": a.latency_requests, "rounds": rounds}
            if a.profile:
                self.profile(stack)
        finally:
            self.stop_stack(stack)

    def phase_stream(self) -> None:
        a = self.args
        mock = ("--tps", f"{a.stream_tps:g}", "--completion-tokens", str(STREAM_TOKENS))
        stack = self.start_stack("stream", mock, TARGETS)
        try:
            rounds: list[dict[str, Any]] = []
            for r in range(a.rounds):
                rounds.append(self.interleaved(stack, "stream", "--requests", str(a.streams), "--warmup", "3",
                                               stream=True))
                progress(f"stream round {r + 1}/{a.rounds}: " + ", ".join(
                    f"{t} TTFT p50 {rounds[-1][t]['ttft_ms']['p50']:.2f} ms" for t in TARGETS))
            self.results["stream"] = {"tokens": STREAM_TOKENS, "tps": a.stream_tps, "streams": a.streams,
                                      "rounds": rounds}
        finally:
            self.stop_stack(stack)

    def phase_festival(self) -> None:
        a = self.args
        mock = ("--latency-ms", f"{FESTIVAL_LATENCY_MS:g}", "--tps", f"{a.festival_tps:g}",
                "--completion-tokens", str(a.festival_tokens))
        stack = self.start_stack("festival", mock, ("forwarder", "full"))
        try:
            out: dict[str, Any] = {"rate": a.festival_rate, "duration_s": a.festival_duration,
                                   "tokens": a.festival_tokens, "tps": a.festival_tps}
            for target in ("forwarder", "full"):
                before = http("GET", stack.urls[target] + "/metrics")[2].decode() if target == "full" else ""
                data = self.metered(stack, self._load, "open", stack.urls[target], "--rate", f"{a.festival_rate:g}",
                                    "--duration", f"{a.festival_duration:g}", "--stream", "--timeout", "60",
                                    stream=True, timeout=a.festival_duration + 180)
                if target == "full":
                    after = http("GET", stack.urls[target] + "/metrics")[2].decode()
                    data["overhead"] = overhead_delta(before, after)
                    data["statuses"] = status_delta(before, after)
                    data["rss_mb"] = rss_mb(stack.procs["full"].pid)
                out[target] = data
                progress(f"festival {target}: ok {data['ok']}, errors {sum(data['errors'].values())}, "
                         f"unsent {data['unsent']}, TTFT p99 {fmt(data['ttft_ms']['p99'])} ms")
            self.results["festival"] = out
        finally:
            self.stop_stack(stack)

    def phase_memory(self) -> None:
        a = self.args
        stack = self.start_stack("memory", FAST_MOCK, ("full",))
        try:
            pid = stack.procs["full"].pid
            url = stack.urls["full"]
            steps = 10
            step = max(1, a.memory_requests // steps)
            points = [{"requests": 0, "rss_mb": rss_mb(pid)}]
            for _ in range(steps):
                self.send_exactly(url, step)
                points.append({"requests": served(url), "rss_mb": rss_mb(pid)})
                progress(f"memory: {points[-1]['requests']:,} requests, RSS {points[-1]['rss_mb']:.1f} MB")
            self.results["memory"] = {"points": points, "step": step}
        finally:
            self.stop_stack(stack)

    def send_exactly(self, url: str, count: int) -> int:
        """Send ``count`` requests (wrk stops itself at the count; Floodgate's counter confirms)."""
        if not self.wrk:
            return int(self.closed(url, 3600, max_requests=count)["requests"])
        start = served(url)
        c = self.args.concurrency
        argv = [self.wrk, "-t1", f"-c{c}", "-d600s", "--timeout", "30s", "-s",
                str(REPO / "bench" / "wrk" / "chat.lua"), url + CHAT_PATH, "--", str(self.bodies[False]), self.key]
        env = {**self.procs.env, "BENCH_MAX_REQUESTS": str(count)}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                cwd=REPO, env=env, start_new_session=True,
                                preexec_fn=self.procs.preexec(self.load_cpu))
        self.procs.children.append(proc)
        try:
            # wrk's main thread sleeps for -d even after its worker stopped: wake it (SIGINT)
            # once Floodgate has served the count.
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.25)
                if served(url) - start >= count:
                    time.sleep(0.2)
                    proc.send_signal(signal.SIGINT)
                    break
            proc.communicate(timeout=30)
        finally:
            Processes.stop(proc)
            self.procs.children.remove(proc)
        return served(url) - start

    # -- profiling ----------------------------------------------------------------------------
    def profile(self, stack: Stack) -> None:
        """py-spy on each Floodgate target under the throughput load: collapsed stacks + a summary.

        ``--gil`` keeps only samples of the thread holding the GIL: the event loop's CPU work
        (the ledger's writer thread waiting on its queue would otherwise look busy).
        """
        if not self.py_spy:
            progress("--profile: py-spy is not installed (pip install py-spy); skipped")
            return
        outdir = Path(self.args.profile)
        outdir.mkdir(parents=True, exist_ok=True)
        duration = max(5, int(self.args.duration))
        report: dict[str, Any] = {}
        for target in TARGETS:
            raw = outdir / f"{target}.txt"
            spy = self.procs.start(f"py-spy-{target}", [self.py_spy, "record", "--pid",
                                                       str(stack.procs[target].pid), "--duration", str(duration),
                                                       "--rate", "250", "--gil", "--format", "raw", "-o", str(raw)],
                                   self.load_cpu)
            time.sleep(1.0)  # let py-spy attach
            self.closed(stack.urls[target], duration + 1)
            spy.wait(timeout=60)
            report[target] = summarize_profile(raw.read_text())
            progress(f"profile {target}: {raw} (collapsed stacks; flamegraph.pl or speedscope can draw them)")
        self.results["profile"] = report
        (outdir / "summary.json").write_text(json.dumps(report, indent=2))


# -- main ---------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="a fast sanity run: 1 round, short durations")
    p.add_argument("--rounds", type=int, help="rounds per phase (default 3; --quick 1)")
    p.add_argument("--duration", type=float, help="seconds of closed-loop load per target per round (default 10)")
    p.add_argument("--concurrency", type=int, default=64, help="closed-loop connections (default 64)")
    p.add_argument("--latency-requests", type=int, help="sequential requests per target per round (default 2000)")
    p.add_argument("--streams", type=int, help="sequential streams per target per round (default 30)")
    p.add_argument("--stream-tps", type=float, default=500.0,
                   help="tokens/s of the 200-chunk stream mock (default 500: one event every 2 ms)")
    p.add_argument("--festival-rate", type=float, default=500.0, help="open-loop req/s (default 500)")
    p.add_argument("--festival-duration", type=float, help="seconds (default 60; --quick 10)")
    p.add_argument("--festival-tokens", type=int, default=24, help="streamed answer length (default 24)")
    p.add_argument("--festival-tps", type=float, default=0.0,
                   help="tokens/s of the festival answers; 0 (default) = all at once after the latency "
                        "(at 80, even the bare forwarder cannot relay 500 streams/s on one core here)")
    p.add_argument("--flaky-rate", type=float, default=50.0, help="flaky phase: streams/s (default 50)")
    p.add_argument("--flaky-duration", type=float, help="flaky phase: seconds per target (default 30; --quick 10)")
    p.add_argument("--flaky-slow-share", type=float, default=0.05, help="share of slow first tokens (0.05)")
    p.add_argument("--flaky-slow-ms", type=float, default=3000.0, help="how late they are (3000 ms)")
    p.add_argument("--flaky-break-share", type=float, default=0.01,
                   help="share of streams dying after the role chunk (0.01)")
    p.add_argument("--overload-seconds", type=float,
                   help="festival overload: seconds of the ramp per target (default 90; --quick 30)")
    p.add_argument("--overload-plot", metavar="PNG", help="festival overload: where to write the plot "
                   "(default: festival-overload.png in the work directory, kept)")
    p.add_argument("--memory", action="store_true", help="also run the (slow) memory check")
    p.add_argument("--memory-requests", type=int, help="requests for the memory check (default 200000)")
    p.add_argument("--only", help=f"comma-separated phases: {', '.join(PHASES)}")
    p.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto",
                   help="closed-loop load generator: wrk when installed (auto), or the built-in Python one")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--peers", type=lambda text: [p for p in text.split(",") if p], default=[],
                   help=f"other gateways in the throughput and latency phases: {', '.join(peers.PEERS)} "
                        f"(installed in their own venv, LiteLLM {peers.LITELLM_VERSION})")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop of Floodgate and the forwarder alike (auto: uvloop when installed)")
    p.add_argument("--profile", metavar="DIR", help="also py-spy the Floodgate targets under load (needs py-spy)")
    p.add_argument("--json", metavar="FILE", help="write every raw number as JSON to FILE")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, ledger)")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {"rounds": 1 if q else 3, "duration": 3.0 if q else 10.0, "latency_requests": 300 if q else 2000,
                "streams": 10 if q else 30, "festival_duration": 10.0 if q else 60.0,
                "flaky_duration": 10.0 if q else 30.0, "overload_seconds": 30.0 if q else 90.0,
                "memory_requests": 20_000 if q else 200_000}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    phases = [s.strip() for s in args.only.split(",")] if args.only else list(DEFAULT_PHASES)
    if args.memory and "memory" not in phases:
        phases.append("memory")
    unknown = [s for s in phases if s not in PHASES]
    if unknown:
        p.error(f"--only: unknown phase(s) {', '.join(unknown)} (choose from {', '.join(PHASES)})")
    args.phases = phases
    unknown = [name for name in args.peers if name not in peers.PEERS]
    if unknown:
        p.error(f"--peers: unknown peer(s) {', '.join(unknown)} (choose from {', '.join(peers.PEERS)})")
    bounds = {"rounds": (1, 20), "duration": (1, 300), "concurrency": (1, 1024), "latency_requests": (10, 100_000),
              "streams": (1, 1000), "festival_rate": (1, 5000), "festival_duration": (1, 600),
              "festival_tokens": (1, 2000), "festival_tps": (0, 100_000), "stream_tps": (0, 100_000),
              "memory_requests": (100, 2_000_000), "flaky_rate": (1, 1000), "flaky_duration": (1, 600),
              "flaky_slow_share": (0, 1), "flaky_break_share": (0, 1), "flaky_slow_ms": (0, 60_000),
              "overload_seconds": (10, 600)}
    for key, (low, high) in bounds.items():
        if not low <= getattr(args, key) <= high:
            p.error(f"--{key.replace('_', '-')} must be within {low}..{high}")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM: clean up like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="floodgate-bench-"))
    bench = Bench(args, workdir)
    if bench.pin:
        os.sched_setaffinity(0, {0})  # this driver script waits on CPU 0 with the load generator
    previous = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    bench.results["machine"] = machine()
    bench.results["driver"] = (f"wrk -t1 -c{args.concurrency} ({bench.results['machine']['wrk']}) + bench/load.py"
                               if bench.wrk else f"bench/load.py (Python aiohttp, {args.concurrency} workers)")
    bench.results["options"] = {k: v for k, v in vars(args).items()}
    bench.results["machine"]["event_loop"] = bench.loop
    progress(f"work directory {workdir}; phases {', '.join(args.phases)}; "
             f"{'pinned' if bench.pin else 'not pinned'}; driver {bench.results['driver']}")
    def run_phases() -> None:
        phases = set(args.phases)
        if phases & {"throughput", "latency"}:
            bench.phase_throughput_latency(phases)
        if "stream" in phases:
            bench.phase_stream()
        if "festival" in phases:
            bench.phase_festival()
        if "flaky" in phases:
            flaky.run(bench)
        if "overload" in phases:
            overload.run(bench)
        if "memory" in phases:
            bench.phase_memory()

    def cleanup() -> None:
        bench.procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)

    status = guarded(run_phases, cleanup, progress)
    bench.results["loadavg_end"] = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
    if any(k in bench.results for k in PHASES):
        text = Report(bench.results, rounds=args.rounds, pinned=bench.pin).render()
        if "flaky" in bench.results:
            text += "\n\n" + flaky.render(bench.results["flaky"])
        if "overload" in bench.results:
            text += "\n\n" + overload.render(bench.results["overload"])
        print(text)
        bench.results["report"] = text
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=2, default=str))
        progress(f"raw numbers in {args.json}")
    if args.keep or status or ("overload" in bench.results and not args.overload_plot):
        progress(f"logs and configs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
