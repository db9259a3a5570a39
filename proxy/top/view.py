"""One frame of ``floodgate status``: the status document as plain text tables, with ANSI colours.

Per route: requests/s, in flight, queue length and predicted wait, the overload step in
force, cost per minute. Per deployment: requests/s, in flight, breaker state, the limits
in force (learned from the provider, or adapted) against the configured ones, what is
left of the quota, recent time to first token, 429s from the provider, cost per minute.
A missing figure (a plugin not loaded) is ``-``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render"]

BOLD, DIM, RED, YELLOW, GREEN, RESET = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[0m"


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _money(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _limit(row: Mapping[str, Any], kind: str) -> str:
    """``in force/configured`` (one figure when they agree)."""
    limits = row.get("limits") or {}
    configured = (row.get("configured") or {}).get({"concurrency": "max_concurrent"}.get(kind, kind))
    value = limits.get(kind)
    if value is None:
        return "-" if configured is None else _num(configured, 0)
    shown = _num(float(value), 0)
    return shown if configured is None or float(configured) == float(value) else f"{shown}/{_num(configured, 0)}"


def _table(headers: Sequence[str], rows: Sequence[tuple[Sequence[str], str]], colour: bool) -> list[str]:
    """Rows of cells (and each row's colour), left-aligned first column, the rest right-aligned."""
    widths = [max(len(h), *(len(cells[i]) for cells, _ in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [(BOLD if colour else "") + line(headers) + (RESET if colour else "")]
    for cells, tint in rows:
        text = line(cells)
        out.append(tint + text + RESET if colour and tint else text)
    return out


def render(doc: Mapping[str, Any] | None, *, source: str, error: str | None = None, width: int = 160,
           colour: bool = True, now: float | None = None) -> str:
    """The frame for ``doc`` (``None`` and ``error``: the gateway could not be read)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(now if now is not None else time.time()))
    lines = [(BOLD if colour else "") + f"floodgate status — {source} — {stamp}" + (RESET if colour else "")]
    if doc is None:
        lines.append((RED if colour else "") + f"cannot read the status: {error}" + (RESET if colour else ""))
        return "\n".join(line[:width] for line in lines) + "\n"
    gw = doc.get("gateway") or {}
    lines.append(f"gateway: {_num(gw.get('requests_per_s'))} req/s · {_num(gw.get('in_flight'), 0)} in flight · "
                 f"${_money(gw.get('cost_per_min_usd'))}/min · "
                 f"{'ready' if gw.get('ready', True) else 'NOT READY'}")
    lines.append("")
    routes = doc.get("routes") or {}
    rows: list[tuple[tuple[str, ...], str]] = []
    for name in sorted(routes):
        r = routes[name]
        steps = r.get("steps_in_force") or []
        step = r.get("degraded")
        shown = "-" if not step else (step if len(steps) <= 1 else f"{step} ({', '.join(steps)})")
        tint = (RED if step in ("reject",) else YELLOW) if step else ""
        rows.append(((str(name), _num(r.get("requests_per_s")), _num(r.get("in_flight"), 0),
                      _num(r.get("queue", 0), 0), _num(r.get("predicted_wait_ms", 0.0), 0), shown,
                      _money(r.get("cost_per_min_usd"))), tint))
    lines += _table(("ROUTE", "REQ/S", "IN FLIGHT", "QUEUE", "WAIT ms", "DEGRADED", "$/MIN"), rows, colour)
    lines.append("")
    deployments = doc.get("deployments") or {}
    rows = []
    for name in sorted(deployments):
        d = deployments[name]
        breaker = d.get("breaker", "-")
        left = d.get("remaining") or {}
        tint = RED if breaker == "open" else YELLOW if breaker == "half_open" else ""
        rows.append(((str(name), _num(d.get("requests_per_s")), _num(d.get("in_flight"), 0), str(breaker),
                      _limit(d, "requests_per_minute"), _limit(d, "tokens_per_minute"),
                      _limit(d, "concurrency") + ("*" if d.get("adaptive") else ""),
                      f"{_num(left.get('requests'), 0)}/{_num(left.get('tokens'), 0)}", _num(d.get("ttft_ms"), 0),
                      _num(d.get("throttled"), 0), _money(d.get("cost_per_min_usd"))), tint))
    lines += _table(("DEPLOYMENT", "REQ/S", "IN FLIGHT", "BREAKER", "RPM", "TPM", "CONC", "LEFT req/tok", "TTFT ms",
                     "429s", "$/MIN"), rows, colour)
    lines.append("")
    lines.append((DIM if colour else "") + "limits: in force/configured (learned from the provider); CONC*: adaptive"
                 + (RESET if colour else ""))
    return "\n".join(_clip(line, width) for line in lines) + "\n"


def _clip(line: str, width: int) -> str:
    """Cut a line to ``width`` visible characters (ANSI sequences do not count)."""
    visible, out, i = 0, [], 0
    while i < len(line):
        if line[i] == "\x1b":
            end = line.find("m", i)
            if end < 0:
                break
            out.append(line[i:end + 1])
            i = end + 1
            continue
        if visible >= width:
            i += 1
            continue
        out.append(line[i])
        visible += 1
        i += 1
    return "".join(out)
