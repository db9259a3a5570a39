"""The read side of the usage ledger, shared by ``floodgate usage`` and ``GET /-/usage``.

:func:`summary_query` is the one query both backends run (SQLite and PostgreSQL
speak the same SQL here) and :func:`summary_result` shapes its rows;
:func:`format_table` prints the result. Also the time arithmetic both sides need:
:func:`parse_since` for ``--since`` / ``?since=`` and :func:`periods` for the
budgets' UTC days and months.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import proxy

from .rows import iso_utc

__all__ = ["EARLIEST", "GROUPS", "LATEST", "format_table", "parse_since", "periods", "summary_query",
           "summary_result"]

#: ``by`` choices and the SQL expression each groups on (a fixed map: no injection).
GROUPS: dict[str, str] = {
    "key": "key",
    "model": "COALESCE(model, '-')",
    "route": "COALESCE(route, '-')",
    "day": "substr(ts, 1, 10)",
    "kind": "COALESCE(kind, 'model')",
    "deployment": "COALESCE(model || '@' || deployment, model, '-')",
    "degraded": "COALESCE(degraded, '-')",
}

#: The instants a ``since`` may name: from the Unix epoch to the end of year 9999 (UTC).
EARLIEST, LATEST = 0.0, 253_402_300_799.0

_SINCE_RELATIVE = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,9})?)\s*([mhdw])\s*$")
_UNIT_SECONDS = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_FORMS = "a date (2026-11-01), a date-time (2026-11-01T12:00) or a span (30m, 24h, 7d, 2w)"


def parse_since(text: str, now: float | None = None) -> float:
    """The Unix time ``text`` means: a UTC date or date-time (``2026-11-01``,
    ``2026-11-01T12:00``) or a span back from now (``30m``, ``24h``, ``7d``, ``2w``).

    Raises :class:`ValueError` with a message fit for the user (the text shortened)
    for anything else, and for instants before 1970 or after 9999.
    """
    shown = repr(proxy.shorten(text, 40))
    match = _SINCE_RELATIVE.match(text)
    if match:
        when = (time.time() if now is None else now) - float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        try:
            parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00")) if len(text) <= 64 else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise ValueError(f"{shown} is not {_FORMS}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        when = parsed.timestamp()
    if not (math.isfinite(when) and EARLIEST <= when <= LATEST):
        raise ValueError(f"{shown} is outside 1970-01-01 .. 9999-12-31")
    return when


def periods(now: float) -> tuple[float, float, float, float]:
    """The UTC calendar periods containing ``now``: (day start, day end, month start, month end)."""
    t = time.gmtime(now)
    day = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
    month = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    year, next_month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(day), float(day + 86400), float(month), float(calendar.timegm((year, next_month, 1, 0, 0, 0)))


def summary_query(by: str, since: float | None, placeholder: str) -> tuple[str, tuple[Any, ...]]:
    """The SQL (and parameters) of the summary: per group, requests, tokens, cost, estimated
    and unpriced rows, bytes. ``placeholder`` is the backend's (``?`` or ``$1``).

    :param by: one of :data:`GROUPS` (``KeyError`` otherwise: callers validate first).
    """
    expr = GROUPS[by]
    where, params = (f"WHERE epoch >= {placeholder}", (since,)) if since is not None else ("", ())
    order = "grp" if by == "day" else "cost DESC, grp"
    # A hedged race's losing attempt has a row of its own (its tokens and cost count) but is
    # not a request of its own.
    return (f"SELECT {expr} AS grp, COUNT(*) - COALESCE(SUM(hedged), 0), COALESCE(SUM(prompt_tokens), 0), "
            "COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cached_tokens), 0), "
            "COALESCE(SUM(cost_usd), 0.0) AS cost, COALESCE(SUM(estimated), 0), COALESCE(SUM(unpriced), 0), "
            "COALESCE(SUM(request_bytes), 0), COALESCE(SUM(response_bytes), 0) "
            f"FROM usage {where} GROUP BY grp ORDER BY {order}", params)


def summary_result(rows: Sequence[Sequence[Any]], *, by: str, since: float | None) -> dict[str, Any]:
    """The report of :func:`summary_query`'s rows, with totals."""
    groups = [{"group": r[0], **_numbers(r[1:])} for r in rows]
    total = _numbers([sum(r[i] for r in rows) for i in range(1, 10)])
    return {"by": by, "since": iso_utc(since) if since is not None else None, "groups": groups, "total": total}


def _numbers(values: Sequence[Any]) -> dict[str, Any]:
    requests, prompt, completion, cached, cost, estimated, unpriced, sent, received = values
    return {"requests": int(requests), "prompt_tokens": int(prompt), "completion_tokens": int(completion),
            "cached_tokens": int(cached), "cost_usd": round(float(cost), 10), "estimated": int(estimated),
            "unpriced": int(unpriced), "request_bytes": int(sent), "response_bytes": int(received)}


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table with a totals line (unpriced rows: cost unknown, not counted)."""
    head = (report["by"], "requests", "prompt tokens", "completion tokens", "cost USD", "estimated", "unpriced")

    def cells(label: str, n: dict[str, Any]) -> tuple[str, ...]:
        return (label, f"{n['requests']:,}", f"{n['prompt_tokens']:,}", f"{n['completion_tokens']:,}",
                f"{n['cost_usd']:,.6f}", f"{n['estimated']:,}", f"{n['unpriced']:,}")

    body = [cells(str(g["group"]), g) for g in report["groups"]]
    total = cells("total", report["total"])
    widths = [max(len(row[i]) for row in (head, *body, total)) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    since = f" since {report['since']}" if report["since"] else ""
    title = f"usage by {report['by']}{since}"
    return "\n".join([title, "", line(head), rule, *map(line, body), rule, line(total)])
