"""The human-readable report of ``floodgate loadtest``, made from a :func:`~proxy.loadtest.summarize` dict."""

from __future__ import annotations

from typing import Any

from .options import MAX_DURATION_S

# Schedule lag above this (ms) is reported as the generator falling behind; below it is the
# normal jitter of an event loop on a busy machine.
_BEHIND_MS = 20.0
_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(count: int, peak: int, width: int = 40) -> str:
    units = round(count / peak * width * 8) if peak else 0
    units = max(units, 1) if count else 0
    full, rest = divmod(units, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 10_000 else f"{value:,.0f}"


def _usd(value: float) -> str:
    return f"${value:.6f}" if value < 1 else f"${value:,.4f}"


def _group_table(title: str, groups: dict[str, Any]) -> list[str]:
    width = max([len(title), *(len(k) for k in groups)]) + 2
    lines = [f"by {title}", f"  {title:<{width}}{'requests':>9}{'ok %':>8}{'p50 ms':>10}"
             f"{'p99 ms':>10}{'tokens in/out':>17}{'cost':>13}"]
    for name, g in groups.items():
        lat = g["latency_ms"]
        p50, p99 = (_ms(lat["p50"]), _ms(lat["p99"])) if lat else ("-", "-")
        cost = _usd(g["cost_usd"]) if g["cost_usd"] is not None else "-"
        tokens = f"{g['prompt_tokens']}/{g['completion_tokens']}"
        lines.append(f"  {name:<{width}}{g['requests']:>9}{100 * g['success_rate']:>8.1f}"
                     f"{p50:>10}{p99:>10}{tokens:>17}{cost:>13}")
    return lines


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report of a :func:`summarize` dict."""
    s = summary
    mode = (f"open loop, {s['rate']:g} req/s" if s["mode"] == "open"
            else f"closed loop, {s['concurrency']} concurrent")
    limits = f"for {s['duration_s']:g} s"
    if s["max_requests"]:
        limits = (f"for {s['max_requests']} requests (at most {MAX_DURATION_S:g} s)"
                  if s["duration_s"] >= MAX_DURATION_S else
                  f"{limits} or {s['max_requests']} requests, whichever comes first")
    out = [f"floodgate loadtest → {s['target']}",
           f"  {mode} {limits}; model {s['model']}; stream {'on' if s['stream'] else 'off'}; "
           f"prompts: {s['prompts']}",
           f"  elapsed {s['elapsed_s']:.2f} s; sent {s['sent']}, completed {s['completed']}, "
           f"ok {s['ok']} ({100 * s['success_rate']:.1f}%); "
           f"throughput {s['throughput_rps']:.1f} req/s (ok {s['ok_throughput_rps']:.1f}/s); "
           f"peak in flight {s['peak_in_flight']}"]
    if s["interrupted"]:
        out.append(f"  INTERRUPTED: {s['abandoned']} request(s) in flight were abandoned")
    lag = s["schedule_lag_ms"]
    if lag:
        behind = lag["max"] > _BEHIND_MS or s["unsent"]
        out.append(f"  schedule: {'generator fell BEHIND' if behind else 'kept'} — lag p99 "
                   f"{_ms(lag['p99'])} ms, max {_ms(lag['max'])} ms"
                   + (f"; {s['unsent']} overdue request(s) never sent" if s["unsent"] else "")
                   + ("; latencies include it (measured from the schedule)" if behind else ""))
    if s["mode"] == "open" and s["peak_in_flight"] > s["max_in_flight"]:
        out.append(f"  connection pool full: up to {s['peak_in_flight'] - s['max_in_flight']} "
                   f"request(s) waited for one of the {s['max_in_flight']} connections "
                   "(counted as latency; raise --max-in-flight to open more)")
    out += ["", "status"]
    for outcome, count in s["status_counts"].items():
        share = 100 * count / s["completed"] if s["completed"] else 0.0
        example = s["error_examples"].get(outcome)
        out.append(f"  {outcome:<20}{count:>8}{share:>7.1f}%" + (f"  e.g. {example[:90]}"
                                                                  if example else ""))
    if not s["status_counts"]:
        out.append("  (no response)")
    origin = "scheduled" if s["mode"] == "open" else "actual"
    out += ["", f"latency (ms, successful requests, from the {origin} send)"]
    if s["latency_ms"]:
        out.append(f"  {'':<12}{'avg':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'min':>9}")
    else:
        out.append("  (no successful request)")
    rows = [("total", s["latency_ms"]), ("ttft", s["ttft_ms"]), ("last token", s["ttlt_ms"])]
    if s["mode"] == "open":
        rows.insert(1, ("service", s["service_time_ms"]))
    for label, st in rows:
        if st:
            out.append(f"  {label:<12}" + "".join(f"{_ms(st[k]):>9}" for k in
                                                   ("avg", "p50", "p90", "p99", "max", "min")))
    t = s["tokens"]
    out += ["", "tokens"]
    if t["responses_with_usage"]:
        n = t["responses_with_usage"]
        out.append(f"  prompt {t['prompt']} (avg {t['prompt'] / n:.1f}), completion "
                   f"{t['completion']} (avg {t['completion'] / n:.1f}); "
                   f"{t['completion_per_s']:.1f} completion tokens/s; usage on {n}/"
                   f"{s['completed']} responses")
    else:
        out.append("  no usage reported")
    if s["cost_usd"]:
        c = s["cost_usd"]
        out += ["", "cost", f"  {_usd(c['total'])} over {c['responses']} response(s), "
                f"from {c['source']}"]
    for key, title in (("by_route", "route"), ("by_model", "model")):
        if any(name != "(none)" for name in s[key]):  # only against a Floodgate gateway
            out += ["", *_group_table(title, s[key])]
    if s["histogram_ms"]:
        buckets = s["histogram_ms"]
        peak = max(b["count"] for b in buckets)
        width = max(len(f"{b['high']:g}") for b in buckets)
        out += ["", "latency histogram (ms, log scale; count, cumulative %)"]
        cumulative = 0
        for b in buckets:
            cumulative += b["count"]
            out.append(f"  {b['low']:>{width}g} – {b['high']:<{width}g} │"
                       f"{_bar(b['count'], peak):<40} {b['count']:>7} "
                       f"{100 * cumulative / s['ok']:>6.1f}%")
    return "\n".join(out) + "\n"
