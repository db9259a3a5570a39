"""The "flaky upstream" phase: streamed requests at a steady rate to an upstream where a share
of first tokens are slow and a share of streams die after their role chunk.

Every model the targets use has the same faults (the fallback is no healthier than the
primary). Four targets take turns under the same open-loop load: the bare forwarder
(relays whatever happens), Floodgate's full chain without hedging (fails over streams
that die before their first content), and with hedging (a slow first attempt is raced
by the route's fallback) after a fixed delay or after the model's recent p95. The
client-side figures: errors the client saw, and its time to the first content token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench import configs
from bench.procs import http
from bench.report import fmt, progress

if TYPE_CHECKING:
    from bench.run import Bench

TARGETS = ("forwarder", "full", "hedged", "hedged-p95")
LATENCY_MS = 200.0  # every answer's headers and role chunk come after this
JITTER_MS = 50.0
TOKENS, TPS = 24, 100.0


def mock_args(slow_share: float, slow_ms: float, break_share: float) -> list[str]:
    faults = (f"first_token_delay_ms={slow_ms:g},first_token_delay_rate={slow_share:g},"
              f"break_stream_after=0,stream_fault_rate={break_share:g}")
    args = ["--latency-ms", f"{LATENCY_MS:g}", "--jitter-ms", f"{JITTER_MS:g}", "--tps", f"{TPS:g}",
            "--completion-tokens", str(TOKENS), "--seed", "11"]
    for model in configs.MOCK_MODELS:
        args += ["--fault", f"{model}:{faults}"]
    return args


def _counter(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def run(bench: Bench) -> None:
    a = bench.args
    stack = bench.start_stack("flaky", mock_args(a.flaky_slow_share, a.flaky_slow_ms, a.flaky_break_share),
                              TARGETS)
    try:
        out: dict[str, Any] = {"rate": a.flaky_rate, "duration_s": a.flaky_duration, "slow_share": a.flaky_slow_share,
                               "slow_ms": a.flaky_slow_ms, "break_share": a.flaky_break_share,
                               "latency_ms": LATENCY_MS, "hedge_after_ms": configs.HEDGE_AFTER_MS}
        for target in TARGETS:
            data = bench.metered(stack, bench._load, "open", stack.urls[target], "--rate", f"{a.flaky_rate:g}",
                                 "--duration", f"{a.flaky_duration:g}", "--stream", "--timeout", "60",
                                 stream=True, timeout=a.flaky_duration + 180)
            if target != "forwarder":
                text = http("GET", stack.urls[target] + "/metrics")[2].decode()
                data["hedges"] = _counter(text, "floodgate_hedges_total")
                data["hedge_wins"] = _counter(text, "floodgate_hedge_wins_total")
                data["discarded"] = _counter(text, "floodgate_stream_held_events_discarded_total")
            out[target] = data
            progress(f"flaky {target}: ok {data['ok']}, errors {sum(data['errors'].values())}, "
                     f"TTFT p50 {fmt(data['ttft_ms']['p50'])} ms, p99 {fmt(data['ttft_ms']['p99'])} ms")
        bench.results["flaky"] = out
    finally:
        bench.stop_stack(stack)


def render(data: dict[str, Any]) -> str:
    """The phase's table (Markdown)."""
    lines = [
        f"### Flaky upstream: {data['rate']:g} streams/s for {data['duration_s']:g} s; "
        f"{data['slow_share']:.0%} of first tokens {data['slow_ms']:g} ms late, "
        f"{data['break_share']:.0%} of streams die after the role chunk (every model)",
        "",
        "| target | requests | client-visible errors | TTFT p50 | TTFT p99 | hedges sent / won |",
        "|---|---|---|---|---|---|",
    ]
    names = {"forwarder": "bare forwarder", "full": "Floodgate, hedging off",
             "hedged": f"Floodgate, hedging after {data['hedge_after_ms']:g} ms",
             "hedged-p95": "Floodgate, hedging after the p95"}
    for target in TARGETS:
        r = data.get(target)
        if r is None:
            continue
        errors = sum(r["errors"].values())
        total = r["ok"] + errors
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items()))
        hedges = f"{r['hedges']:.0f} / {r['hedge_wins']:.0f}" if "hedges" in r else "–"
        seen = f"{errors} ({errors / max(1, total):.1%})" + (f": {kinds}" if kinds else "")
        lines.append(f"| {names[target]} | {total} | {seen} | {fmt(r['ttft_ms']['p50'], 0)} ms "
                     f"| {fmt(r['ttft_ms']['p99'], 0)} ms | {hedges} |")
    return "\n".join(lines)
