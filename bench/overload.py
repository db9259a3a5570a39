"""The "festival overload" phase: offered load ramping from 0.5x to 3x the upstream's capacity and
back, against the same gateway with the overload ladder off and on.

The upstream is the mock behaving like a provider under quota: the main model (DeepSeek) on two
provider keys whose real capacities (12 and 6 requests at once, latency doubling there, 429 past it)
the config does not know — both deployments are ``adaptive`` with a ceiling of 64 — and a cheaper
model (Gemini Flash) on a third key (12 at once). Streamed answers of 24 tokens, at 60 tokens/s after
600 ms for the main model: about 11 requests/s is what it serves at its capacity (:data:`CAPACITY`:
18 in flight, 1.6 s each once its latency has doubled).

The ladder, on the main model's route: looser FAQ matches, the cheaper route, answers capped at 8
tokens, shedding the low-priority key, 429. One request in ten asks an FAQ question in too many
words for its strict match; one in five comes from the priority key. Floodgate runs the full chain
(auth, FAQ, ratelimit, retry, cost with its ledger, degrade, traffic); the load generator reads
``/-/status`` every second for the cost per minute and the learned limits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.procs import free_port, wait_ready
from bench.report import fmt, progress

if TYPE_CHECKING:
    from bench.run import Bench

TARGETS = ("ladder-off", "ladder-on")
CAPACITY = 11.0  # requests/s the main model serves at its true capacity (18 in flight, 1.6 s each)
MAIN, CHEAP = "deepseek-v3.2", "gemini-2.5-flash"
ADMIN = "fg-bench-admin-key-0001"
KEYS = {"bulk": "fg-bench-bulk-key-0001", "vip": "fg-bench-vip-key-00001"}
PROVIDER = {"key-a": ("sk-provider-a", 12), "key-b": ("sk-provider-b", 6), "flash": ("sk-provider-f", 12)}
LATENCY_MS = {MAIN: 600.0, CHEAP: 300.0}
TPS = {MAIN: 60.0, CHEAP: 120.0}
TOKENS = 24
STEPS = ("faq", "cheaper", "short", "shed", "reject")


def mock_args() -> list[str]:
    args = ["--completion-tokens", str(TOKENS), "--seed", "12", "--models", f"{MAIN},{CHEAP}"]
    for model in (MAIN, CHEAP):
        args += ["--fault", f"{model}:latency_ms={LATENCY_MS[model]:g},tokens_per_second={TPS[model]:g}"]
    for name, (key, capacity) in PROVIDER.items():
        latency = LATENCY_MS[CHEAP if name == "flash" else MAIN]
        args += ["--quota", f"{key}:capacity={capacity},load_latency_ms={latency / capacity:g},"
                            "overload_retry_after=0.5"]
    return args


def config(upstream: str, ledger: Path, *, ladder: bool) -> dict[str, Any]:
    timeouts = {"connect": 5, "first_byte": 30, "stall": 20, "total": 120}
    upstreams = {name: {"base_url": upstream, "api_key": key, "pool_size": 200, "timeouts": timeouts}
                 for name, (key, _) in PROVIDER.items()}
    plugins: dict[str, Any] = {
        "auth": {"admin_key": ADMIN, "keys": [{"name": "bulk", "key": KEYS["bulk"]},
                                              {"name": "vip", "key": KEYS["vip"], "priority": 10}]},
        "faq": {"rules": [{"name": "refund-time", "any": ["退款多久"], "max_length": 20,
                           "answer": "仓库签收退货后 24 小时内退款,原路退回,1-3 个工作日到账。"}]},
        "ratelimit": {"queue": {"max_wait_ms": 3000, "max_length": 10000}},
        "retry": {"max_retries": 2, "max_retry_after_s": 2, "deadline_s": 60},
        "cost": {"ledger": {"path": str(ledger), "flush_interval_s": 1.0}},
    }
    if ladder:
        plugins["degrade"] = {"routes": {MAIN: {"threshold_ms": 400, "recover_ms": 100, "hold_s": 5,
                                                "escalate_s": 1.0, "steps": [
            {"faq": True}, {"name": "cheaper", "route": CHEAP}, {"name": "short", "max_tokens": 8},
            {"name": "shed", "shed_below_priority": 5, "retry_after_s": 5}, {"reject": True, "retry_after_s": 5}]}}}
    return {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": False, "log_level": "warning",
                   "shutdown_timeout": 2},
        "upstreams": upstreams,
        "models": {
            MAIN: {"deployments": [{"upstream": "key-a", "adaptive": True, "limits": {"max_concurrent": 64}},
                                   {"upstream": "key-b", "adaptive": True, "limits": {"max_concurrent": 64}}],
                   "price": {"input": 0.28, "output": 0.42}},
            CHEAP: {"deployments": [{"upstream": "flash", "limits": {"max_concurrent": 12}}],
                    "price": {"input": 0.1, "output": 0.4}}},
        "plugins": plugins,
    }


def run(bench: Bench) -> None:
    a = bench.args
    workdir = bench.workdir
    port = free_port()
    mock = bench.procs.start("overload-mock", [sys.executable, "-m", "proxy", "mock-upstream", "--port", str(port),
                                               *mock_args()], bench.load_cpu)
    origin = f"http://127.0.0.1:{port}"
    procs = [mock]
    try:
        wait_ready(mock, f"{origin}/_mock/stats", "overload mock", workdir / "overload-mock.log")
        out: dict[str, Any] = {"capacity": CAPACITY, "seconds": a.overload_seconds, "low": 0.5, "high": 3.0}
        for target in TARGETS:
            path = workdir / f"overload-{target}.yaml"
            path.write_text(yaml.safe_dump(config(f"{origin}/v1", workdir / f"overload-{target}.db",
                                                  ladder=target == "ladder-on"), allow_unicode=True))
            gw_port = free_port()
            proc = bench.procs.start(f"overload-{target}", [sys.executable, "-m", "proxy", "serve", "--config",
                                                            str(path), "--port", str(gw_port)], bench.server_cpu)
            procs.append(proc)
            url = f"http://127.0.0.1:{gw_port}"
            wait_ready(proc, url + "/readyz", f"overload {target}", workdir / f"overload-{target}.log")
            records = workdir / f"overload-{target}.json"
            bench.procs.run([sys.executable, "-m", "bench.ramp", "--url", url, "--capacity", f"{CAPACITY:g}",
                             "--seconds", f"{a.overload_seconds:g}", "--admin-key", ADMIN,
                             *(arg for name, key in KEYS.items() for arg in ("--key", f"{name}={key}")),
                             "--out", str(records)], bench.load_cpu, a.overload_seconds + 240)
            data = json.loads(records.read_text())
            out[target] = summarize(data)
            out[target]["series"] = series(data)
            progress(f"overload {target}: {out[target]['requests']} requests, success "
                     f"{out[target]['success']:.1%}, TTFT p99 {fmt(out[target]['ttft_p99_ms'], 0)} ms")
            bench.procs.stop(proc)
        plot_path = Path(a.overload_plot) if a.overload_plot else workdir / "festival-overload.png"
        from bench.overload_plot import plot

        plot(out, plot_path)
        out["plot"] = str(plot_path)
        progress(f"overload: plot written to {plot_path}")
        bench.results["overload"] = out
    finally:
        for proc in reversed(procs):
            bench.procs.stop(proc)
            if proc in bench.procs.children:
                bench.procs.children.remove(proc)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """The run's figures: success, TTFT, answers per step and per deployment, cost per minute."""
    requests = data["requests"]
    ok = [r for r in requests if r[3] == 200]
    ttft = [r[4] * 1000 for r in ok if r[4] is not None]
    steps: dict[str, int] = {}
    places: dict[str, int] = {}
    for r in ok:
        step = r[6].split(", ")[-1] if r[6] else "none"
        steps[step] = steps.get(step, 0) + 1
        place = "faq" if r[9] else f"{r[8]}@{r[7]}" if r[7] else r[8] or "?"
        places[place] = places.get(place, 0) + 1
    refused: dict[str, int] = {}
    for r in requests:
        if r[3] != 200:
            why = r[6].split(", ")[-1] if r[6] else f"http {r[3]}"
            refused[why] = refused.get(why, 0) + 1
    costs = [doc.get("gateway", {}).get("cost_per_min_usd") for _, doc in data["status"]]
    costs = [c for c in costs if c is not None]
    return {"requests": len(requests), "success": len(ok) / max(1, len(requests)),
            "ttft_p50_ms": _percentile(ttft, 0.5), "ttft_p99_ms": _percentile(ttft, 0.99),
            "steps": steps, "deployments": places, "refused": refused,
            "cost_per_min_mean": sum(costs) / len(costs) if costs else None,
            "cost_per_min_peak": max(costs) if costs else None}


def series(data: dict[str, Any], width: float = 5.0) -> dict[str, Any]:
    """Per ``width``-second bin: load, success rate, TTFT p99, shares of steps and deployments."""
    bins: dict[int, list[list[Any]]] = {}
    for r in data["requests"]:
        bins.setdefault(int(r[0] // width), []).append(r)
    out: dict[str, Any] = {"t": [], "load": [], "success": [], "ttft_p99_ms": [], "steps": {}, "deployments": {}}
    for i in sorted(bins):
        rows = bins[i]
        ok = [r for r in rows if r[3] == 200]
        out["t"].append((i + 0.5) * width)
        out["load"].append(sum(r[1] for r in rows) / len(rows))
        out["success"].append(len(ok) / len(rows))
        out["ttft_p99_ms"].append(_percentile([r[4] * 1000 for r in ok if r[4] is not None], 0.99))
        for key, pick in (("steps", lambda r: (r[6].split(", ")[-1] if r[6] else "none") if r[3] == 200
                           else "refused"),
                          ("deployments", lambda r: ("faq" if r[9] else r[7] or r[8]) if r[3] == 200 else "refused")):
            counts: dict[str, int] = {}
            for r in rows:
                name = pick(r)
                counts[name] = counts.get(name, 0) + 1
            for name in set(out[key]) | set(counts):
                out[key].setdefault(name, [0.0] * (len(out["t"]) - 1)).append(counts.get(name, 0) / len(rows))
    out["status"] = [[t, doc.get("gateway", {}).get("cost_per_min_usd"),
                      {k: (d.get("limits") or {}).get("concurrency") for k, d in doc.get("deployments", {}).items()
                       if d.get("adaptive")}] for t, doc in data["status"]]
    return out


def render(data: dict[str, Any]) -> str:
    """The phase's table (Markdown)."""
    lines = [
        f"### Festival overload: offered load {data['low']:g}x → {data['high']:g}x → {data['low']:g}x the upstream's "
        f"capacity ({data['capacity']:g} req/s) over {data['seconds']:g} s, streamed; plot: {data.get('plot', '-')}",
        "",
        "| ladder | requests | client success | TTFT p50 | TTFT p99 | answers by step | answers by deployment "
        "| refused | cost/min (mean, peak) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in TARGETS:
        r = data.get(target)
        if r is None:
            continue
        ok = sum(r["steps"].values()) or 1

        def shares(counts: dict[str, int], total: int) -> str:
            return ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))

        cost = (f"${r['cost_per_min_mean']:.4f}, ${r['cost_per_min_peak']:.4f}"
                if r["cost_per_min_mean"] is not None else "-")
        lines.append(f"| {target.split('-')[1]} | {r['requests']} | {r['success']:.1%} | {fmt(r['ttft_p50_ms'], 0)} ms "
                     f"| {fmt(r['ttft_p99_ms'], 0)} ms | {shares(r['steps'], ok)} | {shares(r['deployments'], ok)} "
                     f"| {shares(r['refused'], r['requests']) or '-'} | {cost} |")
    return "\n".join(lines)
