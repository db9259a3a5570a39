"""The benchmark's report: Prometheus and py-spy parsing, the targets, the table."""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.peers import LABELS as PEER_LABELS
from bench.peers import PEERS
from bench.procs import http

TARGETS = ("forwarder", "noplugins", "full")
LABEL = {"forwarder": "bare forwarder", "noplugins": "Floodgate, no plugins", "full": "Floodgate, full chain",
         **PEER_LABELS}
#: Stream phase: the mock's answer length (events relayed per stream, plus framing).
STREAM_TOKENS = 200
#: Festival phase: the mock's latency before the answer starts.
FESTIVAL_LATENCY_MS = 200.0
# Events a client receives for an N-token stream: role chunk, N content chunks, finish chunk, [DONE].
STREAM_FRAMING = 3

# Targets of the issue.
FULL_RATIO_MIN = 0.6
NOPLUGINS_RATIO_MIN = 0.85
FULL_CPU_RATIO_MAX = 1.6  # full chain's CPU per request / the forwarder's
PEER_RATIO_MIN = {"litellm": 40.0}  # full chain's req/s / the peer's
ADDED_P50_MAX_MS = 0.3
ADDED_P99_MAX_MS = 1.0
TTFT_ADDED_P50_MAX_MS = 1.0
FESTIVAL_OVERHEAD_P99_MAX_MS = 5.0
MEMORY_GROWTH_MAX = 0.10
# Tokens arriving in one read with another: the mock itself sends some pairs (timer granularity);
# Floodgate may batch at most this much more than the forwarder does in the same round.
BATCHED_SLACK = 0.05
# The festival's control: the forwarder under the same load must keep up, or the harness
# (mock + load generator on one CPU), not Floodgate, is what was measured.
FESTIVAL_CONTROL_SLACK_MS = 100.0


# -- metrics and profiles ----------------------------------------------------------------------

_SAMPLE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group("name") == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
            out.append((labels, float(m.group("value"))))
    return out


def served(url: str) -> int:
    """Chat requests Floodgate has finished (its own ``floodgate_requests_total``)."""
    text = http("GET", url + "/metrics")[2].decode()
    return int(sum(v for labels, v in _samples(text, "floodgate_requests_total")
                   if labels.get("endpoint") == "chat/completions"))


def status_delta(before: str, after: str) -> dict[str, int]:
    def by_status(text: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, v in _samples(text, "floodgate_requests_total"):
            if labels.get("endpoint") == "chat/completions":
                out[labels["status"]] = out.get(labels["status"], 0.0) + v
        return out
    b, a = by_status(before), by_status(after)
    return {k: int(a[k] - b.get(k, 0.0)) for k in a if a[k] - b.get(k, 0.0)}


def overhead_delta(before: str, after: str) -> dict[str, Any]:
    """Floodgate's ``floodgate_proxy_overhead_seconds`` between two scrapes: count, share ≤ 5 ms, p50/p99."""
    def buckets(text: str) -> dict[float, float]:
        return {float(labels["le"]): v for labels, v in _samples(text, "floodgate_proxy_overhead_seconds_bucket")
                if labels.get("endpoint") == "chat/completions"}
    b, a = buckets(before), buckets(after)
    cumulative = sorted((le, a[le] - b.get(le, 0.0)) for le in a)
    total = cumulative[-1][1] if cumulative else 0.0

    def quantile(q: float) -> float | None:  # Prometheus' histogram_quantile (linear within a bucket)
        if not total:
            return None
        rank, prev_le, prev_count = q * total, 0.0, 0.0
        for le, count in cumulative:
            if count >= rank:
                if le == float("inf"):
                    return prev_le * 1000
                span = count - prev_count
                return (prev_le + (le - prev_le) * ((rank - prev_count) / span if span else 1.0)) * 1000
            prev_le, prev_count = le, count
        return None
    within = next((c for le, c in cumulative if abs(le - 0.005) < 1e-12), 0.0)
    return {"count": int(total), "share_within_5ms": within / total if total else None,
            "p50_ms": quantile(0.5), "p99_ms": quantile(0.99),
            "buckets": {f"{le:g}": int(c) for le, c in cumulative}}


# -- the report --------------------------------------------------------------------------------

def _per_request_us(result: dict[str, Any]) -> float | None:
    """CPU microseconds the server used per request it served (closed-loop results)."""
    cpu = (result.get("cpu_s") or {}).get(result.get("target") or "")
    if not result.get("requests") or cpu is None:
        return None
    return cpu / result["requests"] * 1e6


def _present(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """The targets measured in these rounds: Floodgate's and the forwarder, then any peers."""
    return [t for t in (*TARGETS, *PEERS) if t in rounds[0]]


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}" if len(values) > 1 else ""


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    import aiohttp

    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        pass
    wrk = shutil.which("wrk")
    wrk_version = "-"
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
        wrk_version = out.split(" [")[0].strip() or "?"
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "wrk": wrk_version, "platform": platform.platform(),
            "loadavg_start": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None}


class Report:
    """Renders ``results`` (what bench/run.py collected) as the table, judging every target."""

    def __init__(self, results: dict[str, Any], *, rounds: int, pinned: bool) -> None:
        self.rounds = rounds
        self.pinned = pinned
        self.r = results
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, str, bool | None, str]] = []  # what, measured, goal, met, note

    def add(self, what: str, measured: str, goal: str, met: bool | None, note: str = "") -> None:
        self.targets.append((what, measured, goal, met, note))

    def render(self) -> str:
        r, out = self.r, self.lines
        m = r["machine"]
        out.append(f"Floodgate benchmark — {m['nproc']} CPU(s) {m['cpu']}, Python {m['python']}, "
                   f"aiohttp {m['aiohttp']}, event loop {m.get('event_loop', 'asyncio')}, load: {r['driver']}")
        pin = ("servers under test on CPU 1, mock + load generator on CPU 0" if self.pinned else "no CPU pinning")
        out.append(f"{pin}; load average {' '.join(m['loadavg_start'] or ['?'])} at start, "
                   f"{' '.join(r.get('loadavg_end') or ['?'])} at end; medians of {self.rounds} round(s) "
                   "(targets interleaved per round), ratios to the forwarder of the same round")
        if "throughput" in r:
            self.throughput(r["throughput"])
        if "latency" in r:
            self.latency(r["latency"])
        if "stream" in r:
            self.stream(r["stream"])
        if "festival" in r:
            self.festival(r["festival"])
        if "memory" in r:
            self.memory(r["memory"])
        if "profile" in r:
            self.profile(r["profile"])
        out.append("")
        out.append("Targets")
        width = max((len(t[0]) for t in self.targets), default=10)
        for what, measured, goal, met, note in self.targets:
            verdict = "met" if met else ("NOT met" if met is not None else "n/a")
            out.append(f"  {what:<{width}}  {measured:>22}  {goal:<16} {verdict:<8}{('  ' + note) if note else ''}")
        return "\n".join(out)

    def noise(self, results: Sequence[dict[str, Any]]) -> None:
        shares = [r["foreign_cpu"] for r in results if r.get("foreign_cpu") is not None]
        if shares:
            self.lines.append(f"  (noise: other processes used {statistics.median(shares) * 100:.0f}% of the machine "
                              f"during these measurements, median; max {max(shares) * 100:.0f}%)")

    def throughput(self, data: dict[str, Any]) -> None:
        rounds = data["rounds"]
        self.lines += ["", f"Throughput — closed loop, {data['concurrency']} connections, {data['duration_s']:g} s "
                       "per target per round",
                       f"  {'target':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'× forwarder':>13}"
                       f"{'(range)':>13}{'errors':>8}{'CPU µs/req':>12}{'× by CPU':>10}"]
        for t in _present(rounds):
            ratios = [rd[t]["rps"] / rd["forwarder"]["rps"] for rd in rounds]
            errors = sum(sum(rd[t]["errors"].values()) for rd in rounds)
            cpu = median([_per_request_us(rd[t]) for rd in rounds])
            cpu_ratios = [_per_request_us(rd["forwarder"]) / _per_request_us(rd[t]) for rd in rounds
                          if _per_request_us(rd[t]) and _per_request_us(rd["forwarder"])]
            self.lines.append(f"  {LABEL[t]:<24}{median([rd[t]['rps'] for rd in rounds]):>9.0f}"
                              f"{fmt(median([rd[t]['p50_ms'] for rd in rounds])):>9}"
                              f"{fmt(median([rd[t]['p99_ms'] for rd in rounds])):>9}"
                              f"{statistics.median(ratios):>13.2f}{spread(ratios):>13}{errors:>8}"
                              f"{fmt(cpu, 0):>12}{fmt(median(cpu_ratios)):>10}")
            if t in ("full", "noplugins"):
                goal = FULL_RATIO_MIN if t == "full" else NOPLUGINS_RATIO_MIN
                ratio = statistics.median(ratios)
                self.add(f"throughput {t} / forwarder", f"{ratio:.2f}", f"≥ {goal}", ratio >= goal and not errors,
                         f"{errors} errors" if errors else "")
            if t == "full":
                by_cpu = median([1 / r for r in cpu_ratios])
                self.add("CPU per request, full / forwarder", f"{fmt(by_cpu)}", f"≤ {FULL_CPU_RATIO_MAX}",
                         by_cpu is not None and by_cpu <= FULL_CPU_RATIO_MAX)
            if t in PEER_RATIO_MIN:
                peer = statistics.median([rd["full"]["rps"] / rd[t]["rps"] for rd in rounds if rd[t]["rps"]])
                self.add(f"throughput full / {t}", f"{peer:.1f}×", f"≥ {PEER_RATIO_MIN[t]:g}×",
                         peer >= PEER_RATIO_MIN[t], f"{errors} errors of {t}" if errors else "")
        self.lines.append("  (CPU µs/req: the server process's own CPU time per request, from /proc; '× by CPU' = "
                          "forwarder's CPU per request / target's,\n   about the throughput ratio a quiet "
                          "dedicated core would give)")
        self.noise([rd[t] for rd in rounds for t in _present(rounds)])

    def latency(self, data: dict[str, Any]) -> None:
        rounds = data["rounds"]
        self.lines += ["", f"Latency at concurrency 1 — {data['requests']:,} sequential keep-alive requests per "
                       "target per round (Python aiohttp client; targets take turns every 50 requests)",
                       f"  {'target':<24}{'p50 ms':>9}{'p99 ms':>9}{'added p50 ms':>14}{'added p99 ms':>14}"]
        for t in _present(rounds):
            p50 = median([rd[t]["latency_ms"]["p50"] for rd in rounds])
            p99 = median([rd[t]["latency_ms"]["p99"] for rd in rounds])
            add50 = median([rd[t]["latency_ms"]["p50"] - rd["forwarder"]["latency_ms"]["p50"] for rd in rounds])
            add99 = median([rd[t]["latency_ms"]["p99"] - rd["forwarder"]["latency_ms"]["p99"] for rd in rounds])
            self.lines.append(f"  {LABEL[t]:<24}{fmt(p50, 3):>9}{fmt(p99, 3):>9}"
                              f"{'' if t == 'forwarder' else fmt(add50, 3, True):>14}"
                              f"{'' if t == 'forwarder' else fmt(add99, 3, True):>14}")
            if t in ("full", "noplugins"):
                self.add(f"added latency p50, {t}", f"{fmt(add50, 3, True)} ms", f"≤ {ADDED_P50_MAX_MS} ms",
                         add50 is not None and add50 <= ADDED_P50_MAX_MS)
                self.add(f"added latency p99, {t}", f"{fmt(add99, 3, True)} ms", f"≤ {ADDED_P99_MAX_MS} ms",
                         add99 is not None and add99 <= ADDED_P99_MAX_MS)
        self.noise([rd[t] for rd in rounds for t in _present(rounds)])

    def stream(self, data: dict[str, Any]) -> None:
        rounds = data["rounds"]
        expected_events = data["tokens"] + STREAM_FRAMING
        self.lines += ["", f"Streaming — {data['tokens']} chunks at {data['tps']:g} tokens/s from the mock, "
                       f"{data['streams']} sequential streams per target per round (targets take turns)",
                       f"  {'target':<24}{'TTFT p50':>9}{'TTFT p99':>9}{'TTLT p50':>9}{'TTLT p99':>9}"
                       f"{'+TTFT p50':>10}{'events':>10}{'gap p50':>9}{'batched':>9}"]
        verdicts: dict[str, bool] = {}
        for t in TARGETS:
            events = set().union(*(rd[t]["events_per_stream"].keys() for rd in rounds))
            tokens = set().union(*(rd[t]["tokens_per_stream"].keys() for rd in rounds))
            errors = sum(sum(rd[t]["errors"].values()) for rd in rounds)
            batched = median([rd[t]["batched_token_share"] for rd in rounds])
            add = median([rd[t]["ttft_ms"]["p50"] - rd["forwarder"]["ttft_ms"]["p50"] for rd in rounds])
            self.lines.append(
                f"  {LABEL[t]:<24}{fmt(median([rd[t]['ttft_ms']['p50'] for rd in rounds])):>9}"
                f"{fmt(median([rd[t]['ttft_ms']['p99'] for rd in rounds])):>9}"
                f"{fmt(median([rd[t]['ttlt_ms']['p50'] for rd in rounds]), 1):>9}"
                f"{fmt(median([rd[t]['ttlt_ms']['p99'] for rd in rounds]), 1):>9}"
                f"{'' if t == 'forwarder' else fmt(add, 2, True):>10}{'/'.join(sorted(events)):>10}"
                f"{fmt(median([rd[t]['gap_ms']['p50'] for rd in rounds])):>9}"
                f"{fmt(None if batched is None else batched * 100, 1) + '%':>9}")
            verdicts[t] = (events == {str(expected_events)} and tokens == {str(data["tokens"])} and not errors)
            if t == "full":
                self.add("stream TTFT p50 added, full", f"{fmt(add, 2, True)} ms", f"≤ {TTFT_ADDED_P50_MAX_MS} ms",
                         add is not None and add <= TTFT_ADDED_P50_MAX_MS)
                fwd_batched = median([rd["forwarder"]["batched_token_share"] for rd in rounds]) or 0.0
                relayed = verdicts[t] and batched is not None and batched <= fwd_batched + BATCHED_SLACK
                self.add("stream: every chunk relayed", f"{'/'.join(sorted(events))} events, "
                         f"{fmt((batched or 0) * 100, 1)}% batched", f"= {expected_events}, ≤ fwd+"
                         f"{BATCHED_SLACK * 100:.0f}%", relayed, f"forwarder batched {fwd_batched * 100:.1f}%")
        self.noise([rd[t] for rd in rounds for t in TARGETS])
        self.lines.append(f"  (ms; events per stream expected {expected_events} = {data['tokens']} + role, finish, "
                          "[DONE]; 'batched' = share of tokens that arrived in one network read with another)")

    def festival(self, data: dict[str, Any]) -> None:
        pace = f"at {data['tps']:g} tokens/s" if data["tps"] else "at once"
        self.lines += ["", f"Festival — open loop {data['rate']:g} req/s for {data['duration_s']:g} s, streamed "
                       f"answers: mock {FESTIVAL_LATENCY_MS:g} ms latency + {data['tokens']} tokens {pace}",
                       f"  {'target':<24}{'sent':>7}{'ok':>7}{'errors':>8}{'unsent':>8}{'TTFT p50':>10}"
                       f"{'TTFT p99':>10}{'done p99':>10}{'lag max':>9}"]
        for t in ("forwarder", "full"):
            d = data[t]
            errs = sum(d["errors"].values())
            self.lines.append(f"  {LABEL[t]:<24}{d['scheduled'] - d['unsent']:>7}{d['ok']:>7}{errs:>8}{d['unsent']:>8}"
                              f"{fmt(d['ttft_ms']['p50'], 1):>10}{fmt(d['ttft_ms']['p99'], 1):>10}"
                              f"{fmt(d['latency_ms']['p99'], 1):>10}{fmt(d['max_lag_ms'], 1):>9}")
        fwd, full = data["forwarder"], data["full"]
        ov = full["overhead"]
        added50 = _diff(full["ttft_ms"]["p50"], fwd["ttft_ms"]["p50"])
        added99 = _diff(full["ttft_ms"]["p99"], fwd["ttft_ms"]["p99"])
        self.lines.append(f"  Floodgate's floodgate_proxy_overhead_seconds: {ov['count']} requests, p50 "
                          f"{fmt(ov['p50_ms'], 2)} ms, p99 {fmt(ov['p99_ms'], 2)} ms, "
                          f"{fmt((ov['share_within_5ms'] or 0) * 100, 2)}% ≤ 5 ms; statuses {full['statuses']}; "
                          f"RSS {full['rss_mb']:.0f} MB")
        cpu = {t: data[t]["cpu_s"][t] / data[t]["ok"] * 1e6 if data[t]["ok"] else None for t in ("forwarder", "full")}
        self.lines.append(f"  client-side TTFT full − forwarder: p50 {fmt(added50, 1, True)} ms, "
                          f"p99 {fmt(added99, 1, True)} ms (ms from the scheduled send); server CPU per request: "
                          f"forwarder {fmt(cpu['forwarder'], 0)} µs, full chain {fmt(cpu['full'], 0)} µs")
        self.noise([fwd, full])
        control = (not fwd["errors"] and not fwd["unsent"] and fwd["ttft_ms"]["p99"] is not None
                   and fwd["ttft_ms"]["p99"] <= FESTIVAL_LATENCY_MS + FESTIVAL_CONTROL_SLACK_MS)
        note = "" if control else ("control failed: the bare forwarder did not keep up either (TTFT p99 "
                                   f"{fmt(fwd['ttft_ms']['p99'], 0)} ms), so the mock + load generator "
                                   "or the machine set the limit")
        errors = sum(full["errors"].values()) + full["unsent"]
        self.add("festival errors, full", f"{errors}", "= 0", errors == 0,
                 "unsent = the generator fell > 1 s behind" if full["unsent"] else note)
        self.add("festival proxy-added p99, full", f"{fmt(ov['p99_ms'])} ms", f"≤ {FESTIVAL_OVERHEAD_P99_MAX_MS:g} ms",
                 ov["share_within_5ms"] is not None and ov["share_within_5ms"] >= 0.99,
                 "Floodgate's histogram (handler time only)")
        self.add("festival TTFT p99 full − fwd", f"{fmt(added99, 1, True)} ms",
                 f"≤ {FESTIVAL_OVERHEAD_P99_MAX_MS:g} ms",
                 (added99 is not None and added99 <= FESTIVAL_OVERHEAD_P99_MAX_MS) if control else None,
                 note or "client-side, includes queueing before the handler")

    def profile(self, data: dict[str, Any]) -> None:
        cpu: dict[str, float | None] = {}
        if "throughput" in self.r:
            for t in data:
                cpu[t] = median([_per_request_us(rd[t]) for rd in self.r["throughput"]["rounds"]])
        for t, summary in data.items():
            us = cpu.get(t)

            def scale(pct: float, us: float | None = us) -> str:
                return f"{pct:5.1f}%" + (f" ≈{pct * us / 100:4.0f} µs/req" if us else "")
            what = ("innermost proxy/ or plugins/ frame, i.e. that code plus what it calls" if t != "forwarder"
                    else "self time per function")
            self.lines += ["", f"Profile — {LABEL[t]} under the throughput load (py-spy --gil, {summary['samples']} "
                           f"samples; {what})"]
            table = summary["innermost_project"] if t != "forwarder" else summary["self"]
            self.lines += [f"  {scale(pct)}  {name}" for name, pct in table[:14]]
            if summary.get("plugins_inclusive"):
                self.lines.append("  per plugin module (inclusive): " + ", ".join(
                    f"{name.removeprefix('plugins/')} {pct:.1f}%" for name, pct in summary["plugins_inclusive"]))

    def memory(self, data: dict[str, Any]) -> None:
        points = data["points"]
        self.lines += ["", "Memory — full chain, VmRSS after N requests (fast mock, closed loop)",
                       "  " + "  ".join(f"{p['requests']:,}: {p['rss_mb']:.1f} MB" for p in points)]
        base = points[1] if len(points) > 1 else points[0]  # after the first tenth (20,000 of 200,000)
        last = points[-1]
        growth = (last["rss_mb"] - base["rss_mb"]) / base["rss_mb"]
        self.add("memory growth, full", f"{base['rss_mb']:.1f} → {last['rss_mb']:.1f} MB ({growth * 100:+.1f}%)",
                 f"≤ +{MEMORY_GROWTH_MAX * 100:.0f}%", growth <= MEMORY_GROWTH_MAX,
                 f"after {base['requests']:,} vs {last['requests']:,} requests")
