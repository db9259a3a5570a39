"""Tests of the cost plugin's read-side helpers (plugins/cost/report.py) that need no ledger."""

from __future__ import annotations

import pytest

from plugins.cost.report import parse_since, periods


def test_periods_are_utc_calendar_periods():
    import calendar
    dec31 = calendar.timegm((2026, 12, 31, 23, 59, 0))
    assert periods(dec31) == (calendar.timegm((2026, 12, 31, 0, 0, 0)), calendar.timegm((2027, 1, 1, 0, 0, 0)),
                              calendar.timegm((2026, 12, 1, 0, 0, 0)), calendar.timegm((2027, 1, 1, 0, 0, 0)))
    feb = calendar.timegm((2028, 2, 10, 0, 0, 0))
    assert periods(feb)[3] == calendar.timegm((2028, 3, 1, 0, 0, 0))


def test_parse_since():
    now = 1_800_000_000.0
    assert parse_since("24h", now) == now - 86400
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2026-11-01", now) == 1_793_491_200.0  # midnight UTC
    assert parse_since("2026-11-01T12:00", now) == 1_793_491_200.0 + 43200
    assert parse_since("2026-11-01T12:00:00+02:00", now) == 1_793_491_200.0 + 36000
    with pytest.raises(ValueError, match="is not a date"):
        parse_since("yesterday", now)


@pytest.mark.parametrize("text", ["999999999999d", "99999999999999999999999h", "1e400d", "nan", "NaN", "inf",
                                  "-5d", "0001-01-01", "1969-12-31T23:59:59Z", "9999-12-31T23:59:59-05:00",
                                  "2026-13-01", "2026-02-30", "x" * 10_000, "\x00", "7 d d"])
def test_parse_since_refuses_what_is_no_instant_between_1970_and_9999(text):
    with pytest.raises(ValueError) as info:
        parse_since(text, 1_800_000_000.0)
    assert len(str(info.value)) < 200  # the value is shortened, never echoed whole
