"""The read side of the usage ledger, shared by ``floodgate usage`` and ``GET /-/usage``.

:func:`summarize` groups the rows of an open connection; :func:`read_report`
opens a ledger file for it; :func:`format_table` prints the result. Also the
time arithmetic both sides need: :func:`parse_since` for ``--since`` / ``?since=``
and :func:`periods` for the budgets' UTC days and months.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .schema import MEMORY, SCHEMA, iso_utc

__all__ = ["GROUPS", "format_table", "parse_since", "periods", "read_report", "summarize"]

#: ``by`` choices and the SQL expression each groups on (a fixed map: no injection).
GROUPS: dict[str, str] = {
    "key": "key",
    "model": "COALESCE(model, '-')",
    "route": "COALESCE(route, '-')",
    "day": "substr(ts, 1, 10)",
}

_SINCE_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT_SECONDS = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_since(text: str, now: float | None = None) -> float:
    """The Unix time ``text`` means: a UTC date or date-time (``2026-11-01``,
    ``2026-11-01T12:00``) or a span back from now (``30m``, ``24h``, ``7d``, ``2w``).

    Raises :class:`ValueError` with a message fit for the user.
    """
    match = _SINCE_RELATIVE.match(text)
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a date (2026-11-01), a date-time (2026-11-01T12:00) "
                         "nor a span (30m, 24h, 7d, 2w)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def periods(now: float) -> tuple[float, float, float, float]:
    """The UTC calendar periods containing ``now``: (day start, day end, month start, month end)."""
    t = time.gmtime(now)
    day = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
    month = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    year, next_month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(day), float(day + 86400), float(month), float(calendar.timegm((year, next_month, 1, 0, 0, 0)))


def summarize(conn: sqlite3.Connection, *, since: float | None, by: str) -> dict[str, Any]:
    """Requests, tokens, cost and estimated rows per group, with totals.

    :param since: Unix time of the oldest row to count, or ``None`` for all.
    :param by: one of :data:`GROUPS`.
    """
    expr = GROUPS[by]  # KeyError for a bad ``by``: callers validate first
    where, params = ("WHERE epoch >= ?", (since,)) if since is not None else ("", ())
    order = "grp" if by == "day" else "cost DESC, grp"
    rows = conn.execute(
        f"SELECT {expr} AS grp, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
        f"COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(cost_usd), 0.0) AS cost, COALESCE(SUM(estimated), 0) "
        f"FROM usage {where} GROUP BY grp ORDER BY {order}", params).fetchall()
    groups = [{"group": g, **_numbers(r)} for g, *r in rows]
    total = _numbers([sum(r[i] for r in rows) for i in range(1, 7)])
    return {"by": by, "since": iso_utc(since) if since is not None else None, "groups": groups, "total": total}


def _numbers(values: Sequence[Any]) -> dict[str, Any]:
    requests, prompt, completion, cached, cost, estimated = values
    return {"requests": int(requests), "prompt_tokens": int(prompt), "completion_tokens": int(completion),
            "cached_tokens": int(cached), "cost_usd": round(float(cost), 10), "estimated": int(estimated)}


def read_report(path: str, *, since: float | None, by: str) -> dict[str, Any]:
    """:func:`summarize` a ledger file. Raises :class:`FileNotFoundError` if it does not exist."""
    if path == MEMORY or not os.path.isfile(path):
        raise FileNotFoundError(path)
    with contextlib.closing(sqlite3.connect(path, timeout=10.0)) as conn:
        conn.executescript(SCHEMA)  # a file created by something else: an empty ledger, not a crash
        return summarize(conn, since=since, by=by)


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table with a totals line."""
    head = (report["by"], "requests", "prompt tokens", "completion tokens", "cost USD", "estimated")

    def cells(label: str, n: dict[str, Any]) -> tuple[str, ...]:
        return (label, f"{n['requests']:,}", f"{n['prompt_tokens']:,}", f"{n['completion_tokens']:,}",
                f"{n['cost_usd']:,.6f}", f"{n['estimated']:,}")

    body = [cells(str(g["group"]), g) for g in report["groups"]]
    total = cells("total", report["total"])
    widths = [max(len(row[i]) for row in (head, *body, total)) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    since = f" since {report['since']}" if report["since"] else ""
    title = f"usage by {report['by']}{since}"
    return "\n".join([title, "", line(head), rule, *map(line, body), rule, line(total)])
