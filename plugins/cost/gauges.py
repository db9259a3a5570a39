"""The budget gauges: what is left of each key's budget per period, and what its requests reserve.

With budgets in this process the gauges are computed when scraped (nothing per request),
or set as they change in a worker process (another worker may answer the scrape, from
files). With a shared store they show the fleet's figures that each settlement's reply
brings, set once per reply and key.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

import proxy

from .budgets import Figures, Limits, MemoryBudgetStore

__all__ = ["BudgetGauges"]


class BudgetGauges:
    """``floodgate_cost_budget_remaining_usd`` and ``floodgate_cost_budget_reserved_usd``."""

    def __init__(self, clock: proxy.Clock) -> None:
        self.clock = clock
        self.limits: dict[str, Limits] = {}  # keys with a budget, and what it is
        self._budgets = MemoryBudgetStore()
        self._stale: set[str] = set()  # keys whose gauges changed since the last scrape
        self._eager = False  # set as they change (worker processes), not when scraped
        self._day = 0.0  # the day the gauges were last set in
        self._fleet: dict[str, Figures] = {}  # the latest fleet figures per key, not yet in the gauges
        self._due = False

    def configure(self, registry: CollectorRegistry, budgets: MemoryBudgetStore, *, shared: bool) -> None:
        """Register the gauges; ``budgets``: this process's (unless ``shared``)."""
        self._budgets = budgets
        # Workers report the same (fleet-wide) figures: the most recent report is the value.
        remaining = proxy.CollectedGauge(
            "floodgate_cost_budget_remaining_usd", "US dollars left in a key's budget for the current period",
            ["key", "period"], registry=registry, multiprocess_mode="livemostrecent")
        reserved = proxy.CollectedGauge(
            "floodgate_cost_budget_reserved_usd", "US dollars reserved by a key's requests in flight",
            ["key"], registry=registry, multiprocess_mode="livemostrecent")
        # Set after registering: a reload's adoption copies the previous generation's attributes.
        self._eager = not shared and not remaining.collected_here()
        remaining.before_collect = reserved.before_collect = None if shared else self._refresh
        self._remaining = proxy.LabelCache(remaining)
        self._reserved = proxy.LabelCache(reserved)

    def changed(self, key: str) -> None:
        """``key``'s spending or reservations in this process changed."""
        self._stale.add(key)
        if self._eager:
            self._refresh()

    def fleet(self, key: str, figures: Figures) -> None:
        """The fleet's figures for ``key`` from a reply: the gauges show the last of a reply's."""
        if key not in self.limits:
            return
        self._fleet[key] = figures
        if not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Set the gauges from the fleet figures received so far."""
        self._due = False
        figures, self._fleet = self._fleet, {}
        for key, (day, month, reserved) in figures.items():
            self._set(key, self.limits[key], day, month, reserved)

    def _refresh(self) -> None:
        """The gauges of the keys that changed (of every key in a new period), from this process's budgets."""
        now = self.clock.wall()
        budgets = self._budgets
        stale, self._stale = self._stale, set()
        if budgets.day_start != self._day:  # a new period: every key's remaining budget changed
            self._day = budgets.day_start
            stale = set(self.limits)
        for key in stale:
            limits = self.limits.get(key)
            if limits is not None:
                self._set(key, limits, *budgets.spent_now(key, now))
            else:  # reserved without a budget of its own (the ledger alone)
                self._reserved(key).set(budgets.spent_now(key, now)[2])

    def _set(self, key: str, limits: Limits, day: float, month: float, reserved: float) -> None:
        if limits.daily is not None:
            self._remaining(key, "day").set(max(0.0, limits.daily - day))
        if limits.monthly is not None:
            self._remaining(key, "month").set(max(0.0, limits.monthly - month))
        self._reserved(key).set(reserved)
