"""Budget state: what each key spent this UTC day and month, and what requests in flight reserved.

The rule (the same for every store):

* a request is admitted when, for each period with a cap, ``spent + reserved +
  amount <= cap`` and the key is not exhausted (``spent + reserved < cap``);
  ``amount`` is the request's maximum cost, 0 for an unpriced request (which is
  therefore admitted exactly while the budget is not used up);
* admission reserves ``amount`` (concurrent requests see it at once);
* settlement releases the reservation and adds the actual cost to the periods
  current at settlement (the ledger row's timestamp, so a reload agrees).

Reservations belong to the key, not to a period: one in flight at midnight still
counts against the new day, which it will be charged to. Amounts are US dollars.

:class:`MemoryBudgetStore` is the store of one process, synchronous (no await on
the hot path). :class:`~.redis_budgets.RedisBudgetStore` shares the same state
across a fleet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import proxy

from .report import periods

__all__ = ["DAY", "MONTH", "BudgetStore", "Figures", "Limits", "MemoryBudgetStore", "Reservation", "Verdict", "refusal"]

DAY, MONTH = "day", "month"
#: A key's (spent today, spent this month, reserved), US dollars.
Figures = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's caps in US dollars; ``None``: no cap for that period."""

    daily: float | None
    monthly: float | None

    def __bool__(self) -> bool:
        return self.daily is not None or self.monthly is not None


@dataclass(frozen=True, slots=True)
class Reservation:
    """What admission set aside for one request (``lease`` identifies it in a shared store)."""

    key: str
    amount: float
    lease: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to a reservation: ``reservation`` if admitted, else the period that refused.

    ``spent`` and ``reserved`` are the refusing period's (or, when admitted, the day's)
    figures before this request, for messages and gauges.
    """

    reservation: Reservation | None
    period: str | None = None
    cap: float = 0.0
    spent: float = 0.0
    reserved: float = 0.0


class BudgetStore(Protocol):
    """Where budget state lives (a shared store is async: one round trip per call)."""

    async def reserve(self, key: str, limits: Limits, amount: float, now: float) -> Verdict: ...

    async def settle(self, key: str, reservation: Reservation | None, cost: float,
                     now: float) -> Figures | None:
        """Release ``reservation`` and charge ``cost``; the key's (day, month, reserved) after it if
        the store tells them with no extra cost, else ``None``."""
        ...

    async def spent(self, key: str, now: float) -> Figures:
        """(spent this day, spent this month, reserved now) of ``key``."""
        ...

    async def load(self, spent: dict[str, tuple[float, float]], now: float) -> None:
        """Start from spending recorded in the ledger, per key (day, month), where the store has none."""


def check(limits: Limits, amount: float, day: float, month: float, reserved: float) -> tuple[str, float] | None:
    """The (period, cap) that refuses ``amount``, or ``None`` when it fits."""
    for period, cap, spent in ((DAY, limits.daily, day), (MONTH, limits.monthly, month)):
        if cap is not None:
            used = spent + reserved
            if used >= cap or used + amount > cap:
                return period, cap
    return None


class MemoryBudgetStore:
    """Budget state of one process (see the module docstring); ``now`` is Unix time."""

    def __init__(self) -> None:
        self._day: dict[str, float] = {}
        self._month: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}
        self.day_start = self.day_end = self.month_start = self.month_end = 0.0

    def roll(self, now: float) -> bool:
        """Enter the UTC day (and maybe month) containing ``now``; ``True`` if it changed."""
        if self.day_start <= now < self.day_end:
            return False
        day_start, day_end, month_start, month_end = periods(now)
        if month_start != self.month_start:
            self._month.clear()
        self._day.clear()
        self.day_start, self.day_end, self.month_start, self.month_end = day_start, day_end, month_start, month_end
        return True

    def load_now(self, spent: dict[str, tuple[float, float]], now: float) -> None:
        """Start from spending recorded elsewhere (the ledger), per key (day, month)."""
        self.roll(now)
        for key, (day, month) in spent.items():
            self._day[key] = day
            self._month[key] = month

    def reserve_now(self, key: str, limits: Limits, amount: float, now: float) -> Verdict:
        self.roll(now)
        day, month = self._day.get(key, 0.0), self._month.get(key, 0.0)
        reserved = self._reserved.get(key, 0.0)
        refused = check(limits, amount, day, month, reserved)
        if refused is not None:
            period, cap = refused
            return Verdict(None, period, cap, day if period == DAY else month, reserved)
        self._reserved[key] = reserved + amount
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return Verdict(Reservation(key, amount), spent=day, reserved=reserved)

    def settle_now(self, key: str, reservation: Reservation | None, cost: float, now: float) -> None:
        self.roll(now)
        if reservation is not None:
            left = self._in_flight.get(key, 0) - 1
            if left > 0:
                self._in_flight[key] = left
                self._reserved[key] = max(0.0, self._reserved.get(key, 0.0) - reservation.amount)
            else:  # the last one out: no float residue can pile up
                self._in_flight.pop(key, None)
                self._reserved.pop(key, None)
        if cost:
            self._day[key] = self._day.get(key, 0.0) + cost
            self._month[key] = self._month.get(key, 0.0) + cost

    def spent_now(self, key: str, now: float) -> Figures:
        self.roll(now)
        return self._day.get(key, 0.0), self._month.get(key, 0.0), self._reserved.get(key, 0.0)

    # The BudgetStore protocol (the plugin calls the *_now methods directly: no await).
    async def reserve(self, key: str, limits: Limits, amount: float, now: float) -> Verdict:
        return self.reserve_now(key, limits, amount, now)

    async def settle(self, key: str, reservation: Reservation | None, cost: float, now: float) -> None:
        self.settle_now(key, reservation, cost, now)

    async def spent(self, key: str, now: float) -> Figures:
        return self.spent_now(key, now)

    async def load(self, spent: dict[str, tuple[float, float]], now: float) -> None:
        self.load_now(spent, now)


_ADJECTIVE = {DAY: "daily", MONTH: "monthly"}


def refusal(key: str, amount: float, verdict: Verdict, now: float) -> proxy.Rejection:
    """The 429 of a request its key's budget cannot take (``now``: wall time, for the reset)."""
    period, cap, spent, reserved = verdict.period or DAY, verdict.cap, verdict.spent, verdict.reserved
    adjective = _ADJECTIVE[period]
    _, day_end, _, month_end = periods(now)
    reset = day_end if period == DAY else month_end
    reset_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset))
    if spent >= cap:
        message = f"Key {key!r} has used up its {adjective} budget of ${cap:.6g}; it resets at {reset_at}."
    elif spent + amount > cap:
        message = (f"This request may cost up to ${amount:.6g} (estimated prompt and max output tokens at "
                   f"the route's highest price), more than the ${cap - spent:.6g} left of key {key!r}'s "
                   f"{adjective} budget of ${cap:.6g}. Lower max_tokens or the prompt; the budget resets "
                   f"at {reset_at}.")
    else:  # it fits once requests in flight settle
        message = (f"Key {key!r}'s {adjective} budget of ${cap:.6g} is reserved by requests in flight "
                   f"(${reserved:.6g}); please retry shortly.")
        return proxy.Rejection(429, message, code="insufficient_quota", type="insufficient_quota",
                               headers={"retry-after": "1"})
    return proxy.Rejection(429, message, code="insufficient_quota", type="insufficient_quota",
                           should_retry=False)
