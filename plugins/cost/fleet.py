"""Where budgets live, chosen by the gateway's shared state and kept across reloads.

``state.backend: memory`` — one :class:`~.budgets.MemoryBudgetStore` for the process,
kept by the state (``state.keep``): a reload's new plugin object finds the same spending
and the same reservations in flight.

``state.backend: redis`` — :class:`FleetBudgets`: the fleet's numbers in Redis
(:class:`~.redis_budgets.RedisBudgetStore`) while the state is shared. While Redis is
unreachable, under ``state.on_error: local`` each worker enforces its share of every
key's budget (``cap ÷ (hosts × workers)``, :class:`LocalShareBudgets`), starting from
the fleet's spending as last seen; under ``reject`` :meth:`proxy.SharedState.fallback`
refuses with 503. What was spent meanwhile (and reservations Redis could not release)
is replayed into Redis once it answers again, so an outage is not spending forgotten.

The usage ledger is shared the same way (:class:`LedgerPool`): during a reload the new
configuration's ``proxy_startup`` runs while the old one still serves, and both get
the same open ledger (same database, same journal) instead of opening it twice; it is
closed when the last configuration using it stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

import proxy

from .budgets import DAY, Figures, Limits, MemoryBudgetStore, Reservation, Verdict
from .ledger import Ledger
from .redis_budgets import RedisBudgetStore
from .report import periods

__all__ = ["FleetBudgets", "LedgerPool", "LocalShareBudgets", "fleet_budgets", "memory_budgets"]

log = logging.getLogger("floodgate.cost")

#: Reservations Redis could not release kept for the replay, at most (the rest lapse with their lease).
MAX_UNRELEASED = 100_000
T = TypeVar("T")


def _known(value: T) -> asyncio.Future[T]:
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def memory_budgets(state: proxy.SharedState) -> MemoryBudgetStore:
    """The process's budgets, kept across reloads."""
    return state.keep("cost.budgets", MemoryBudgetStore)


class LocalShareBudgets(MemoryBudgetStore):
    """One worker's share of every key's budget, for while the fleet's store is unreachable.

    A key starts from the fleet's spending (and reservations in flight) as the store last
    reported them, times the share: together the workers stay within what was left.
    Refusals report the fleet-sized figures.
    """

    def __init__(self, share: float, seen: dict[str, Figures]) -> None:
        super().__init__()
        self.share = share
        self._seen = seen
        self._seeded: set[str] = set()

    def reserve_now(self, key: str, limits: Limits, amount: float, now: float) -> Verdict:
        share = self.share
        if key not in self._seeded:
            self._seeded.add(key)
            self.roll(now)
            day, month, reserved = self._seen.get(key, (0.0, 0.0, 0.0))
            self._day[key] = (day + reserved) * share
            self._month[key] = (month + reserved) * share
        local = Limits(None if limits.daily is None else limits.daily * share,
                       None if limits.monthly is None else limits.monthly * share)
        verdict = super().reserve_now(key, local, amount, now)
        if verdict.reservation is not None:
            return verdict
        cap = limits.daily if verdict.period == DAY else limits.monthly
        return Verdict(None, verdict.period, cap or 0.0, verdict.spent / share, verdict.reserved / share)


class FleetBudgets:
    """The :class:`~.budgets.BudgetStore` of a worker on Redis state (see the module docstring)."""

    def __init__(self, state: proxy.SharedState, redis: RedisBudgetStore) -> None:
        self.state = state
        self.redis = redis
        self.local: LocalShareBudgets | None = None  # this outage's local shares
        self._costs: dict[tuple[str, float], list[float]] = {}  # (key, day) -> [cost, when]: not in Redis yet
        self._unreleased: list[tuple[Reservation, float, float]] = []  # (reservation, cost, when)
        self._replay: asyncio.Task[None] | None = None

    def _use_redis(self) -> bool:
        """Whether to ask Redis now; otherwise the local shares (or the 503 under ``reject``)."""
        state = self.state
        if state.shared:
            if self.local is not None or self._costs or self._unreleased:
                self._recovered()
            return True
        state.fallback()
        if self.local is None:
            self.local = LocalShareBudgets(state.local_share(1.0), self.redis.seen)
        return False

    def reserve(self, key: str, limits: Limits, amount: float, now: float) -> Awaitable[Verdict]:
        """The verdict (an awaitable). The call to Redis is queued now: it goes out with what
        the other plugins ask for the same request. Raises the 503 of ``on_error: reject``."""
        if self._use_redis():
            return self._remote(self.redis.reserve(key, limits, amount, now), key, limits, amount, now)
        assert self.local is not None
        return _known(self.local.reserve_now(key, limits, amount, now))

    async def _remote(self, pending: Awaitable[Verdict], key: str, limits: Limits, amount: float,
                      now: float) -> Verdict:
        try:
            return await pending
        except self.state.errors as exc:
            self.state.failed(exc)
        self._use_redis()
        assert self.local is not None
        return self.local.reserve_now(key, limits, amount, now)

    def settle(self, key: str, reservation: Reservation | None, cost: float,
               now: float) -> asyncio.Future[Figures | None]:
        """Release ``reservation`` where it was made and charge ``cost``: in Redis if it answers,
        else locally and later into Redis. Never refuses (it settles a request already answered).
        The call to Redis is queued now, with what other plugins send for the request's finish;
        the future has the fleet's figures after it (``None``: settled locally)."""
        remote = reservation if reservation is not None and reservation.lease else None
        if reservation is not None and remote is None and self.local is not None:
            self.local.settle_now(key, reservation, 0.0, now)
        if self.state.shared:
            result: asyncio.Future[Figures | None] = asyncio.get_running_loop().create_future()
            self.redis.settle(key, remote, cost, now).add_done_callback(
                lambda done: self._settled(done, result, key, remote, cost, now))
            return result
        self._settle_local(key, remote, cost, now)
        return _known(None)

    def _settled(self, done: asyncio.Future[Figures], result: asyncio.Future[Figures | None], key: str,
                 reservation: Reservation | None, cost: float, now: float) -> None:
        """Redis's answer to a settlement (a callback: no task per request)."""
        exc = None if done.cancelled() else done.exception()
        if exc is None and not done.cancelled():
            result.set_result(done.result())
            return
        if exc is not None and not isinstance(exc, self.state.errors):
            result.set_exception(exc)  # a bug, not an outage: the cost plugin logs it
            return
        if exc is not None:
            self.state.failed(exc)
        self._settle_local(key, reservation, cost, now)
        result.set_result(None)

    def _settle_local(self, key: str, reservation: Reservation | None, cost: float, now: float) -> None:
        if self.local is not None and cost:
            self.local.settle_now(key, None, cost, now)  # this worker's share counts it at once
        self._owe(key, reservation, cost, now)

    def _owe(self, key: str, reservation: Reservation | None, cost: float, now: float) -> None:
        """Keep for the replay: a reservation Redis did not release (with its cost: the call may
        have gone through, so its replay charges only if the reservation is still there), or the
        cost of a request settled locally."""
        if reservation is not None:
            if len(self._unreleased) < MAX_UNRELEASED:
                self._unreleased.append((reservation, cost, now))
            return
        if cost:
            entry = self._costs.setdefault((key, periods(now)[0]), [0.0, now])
            entry[0] += cost

    def _recovered(self) -> None:
        """Redis answers again: forget the outage's local shares, replay what it missed."""
        self.local = None
        if self._replay is None and (self._costs or self._unreleased):
            self._replay = asyncio.get_running_loop().create_task(self._send_owed())

    async def _send_owed(self) -> None:
        costs, self._costs = self._costs, {}
        unreleased, self._unreleased = self._unreleased, []
        try:
            for (key, _), (cost, when) in list(costs.items()):
                await self.redis.settle(key, None, cost, when)
                del costs[(key, _)]
            while unreleased:
                reservation, cost, when = unreleased[-1]
                await self.redis.settle(reservation.key, reservation, cost, when, once=True)
                unreleased.pop()
            log.info("budgets: spending of the Redis outage stored in the fleet's budgets")
        except self.state.errors as exc:  # down again: kept for the next recovery
            self.state.failed(exc)
            for (key, day), (cost, when) in costs.items():
                entry = self._costs.setdefault((key, day), [0.0, when])
                entry[0] += cost
            self._unreleased.extend(unreleased)
        finally:
            self._replay = None

    async def spent(self, key: str, now: float) -> Figures:
        if self.state.shared:
            return await self.redis.spent(key, now)
        return self.local.spent_now(key, now) if self.local is not None else (0.0, 0.0, 0.0)

    async def load(self, spent: dict[str, tuple[float, float]], now: float) -> None:
        """Seed the fleet's spending from the ledger where Redis has none (if it answers)."""
        if not self.state.shared:
            return
        try:
            await self.redis.load(spent, now)
        except self.state.errors as exc:
            self.state.failed(exc)


def fleet_budgets(state: proxy.SharedState) -> FleetBudgets:
    """The application's Redis budgets, kept across reloads (lease lifetime as the store's default)."""
    return state.keep("cost.fleet", lambda: FleetBudgets(
        state, RedisBudgetStore(state.redis, state.key("budget"), scripts=state.pipe)))


class LedgerPool:
    """The application's open ledgers by what they write to, each with its number of users."""

    def __init__(self) -> None:
        self._open: dict[tuple[object, ...], tuple[Ledger, int]] = {}  # identity -> (ledger, users)

    @staticmethod
    def identity(ledger: Ledger) -> tuple[object, ...]:
        backend = ledger.backend
        return (type(backend).__name__, backend.name, getattr(backend, "schema", None),
                ledger.journal.directory if ledger.journal is not None else None)

    async def acquire(self, ledger: Ledger) -> tuple[Ledger, bool]:
        """The open ledger writing where ``ledger`` would (``ledger`` itself, opened, if none
        does yet), and whether it was opened now. Its batch settings become ``ledger``'s."""
        key = self.identity(ledger)
        if key in self._open:
            shared, users = self._open[key]
            self._open[key] = (shared, users + 1)
            shared.batch_size, shared.flush_interval = ledger.batch_size, ledger.flush_interval
            shared.warn_backlog = ledger.warn_backlog
            return shared, False
        self._open[key] = (ledger, 1)
        try:
            await ledger.open()
        except BaseException:
            del self._open[key]
            raise
        return ledger, True

    async def release(self, ledger: Ledger) -> None:
        """A configuration stopped using ``ledger``: the last one closes it."""
        key = self.identity(ledger)
        shared, users = self._open.get(key, (None, 0))
        if shared is not ledger:
            return
        if users > 1:
            self._open[key] = (ledger, users - 1)
            return
        del self._open[key]
        await ledger.close()


def ledger_pool(state: proxy.SharedState) -> LedgerPool:
    return state.keep("cost.ledgers", LedgerPool)
