"""Fleet-wide budgets in Redis: every worker of every host reserves against the same numbers.

One atomic Lua script per admission (expire dead leases, read spent and reserved,
apply the rule of :mod:`.budgets`, add the lease) and one per settlement (drop the
lease, add the cost to the current day and month). The admissions (settlements) a
worker makes in one turn of its event loop go together in one call
(:class:`proxy.Coalescer`), which on the gateway's pipe shares its round trip with
the other stores' calls of that turn (the request's rate limits).

Keys, under ``prefix`` and a hash tag of the key name (one cluster slot per key)::

    {prefix}:{<key>}:d:20261101   spent this UTC day, nano-dollars; expires at the day's end + GRACE
    {prefix}:{<key>}:m:202611     spent this UTC month; expires at the month's end + GRACE
    {prefix}:{<key>}:leases       reservations in flight (ZSET, score = deadline, Redis's clock)
    {prefix}:{<key>}:amounts      their amounts (HASH)
    {prefix}:{<key>}:reserved     their sum

Amounts are integers (nano-dollars), so sums are exact. A reservation is a lease:
a worker that dies with requests in flight does not hold the budget for ever — its
reservations lapse after ``lease_ttl`` seconds. The lease keys expire too (every
touch renews them), so Redis memory stays bounded whatever the number of keys.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis

import proxy

from .budgets import DAY, MONTH, Figures, Limits, Reservation, Verdict
from .report import periods

__all__ = ["GRACE", "RedisBudgetStore"]

#: Seconds a period's spending outlives the period (a late read still finds it).
GRACE = 3600
_NANO = 1_000_000_000
_KEYS_KEPT = 10_000  # keys whose names are remembered (a fleet has far fewer API keys)

# Each script serves a batch: the calls a worker made while its previous one was on its way, in
# order, each on its own five keys (KEYS[5i+1..5i+5]). Time is Redis's (ms), read once.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local function reserve(k, amount, daily, monthly, lease)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[k + 3], '-inf', now)
  if #dead > 0 then
    local freed = 0
    for _, id in ipairs(dead) do
      freed = freed + (tonumber(redis.call('HGET', KEYS[k + 4], id)) or 0)
      redis.call('HDEL', KEYS[k + 4], id)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    redis.call('DECRBY', KEYS[k + 5], freed)
  end
  local day = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
  local month = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
  local reserved = math.max(0, tonumber(redis.call('GET', KEYS[k + 5]) or '0'))
  for _, c in ipairs({{daily, day, 'day'}, {monthly, month, 'month'}}) do
    if c[1] >= 0 then
      local used = c[2] + reserved
      if used >= c[1] or used + amount > c[1] then return {0, c[3], day, month, reserved} end
    end
  end
  redis.call('ZADD', KEYS[k + 3], now + ttl, lease)
  redis.call('HSET', KEYS[k + 4], lease, amount)
  redis.call('INCRBY', KEYS[k + 5], amount)
  for i = 3, 5 do redis.call('PEXPIRE', KEYS[k + i], ttl * 2) end
  return {1, 'day', day, month, reserved}
end
local out = {}
for i = 0, (#ARGV - 1) / 4 - 1 do
  local a = 2 + i * 4
  local r = reserve(i * 5, tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3])
  for _, v in ipairs(r) do out[#out + 1] = v end
end
return out
"""

# ARGV per settlement: lease ('' for none), cost, day expiry, month expiry, once ('1': a replay).
_SETTLE = """
local function settle(k, lease, cost, day_expiry, month_expiry, once)
  if lease ~= '' then
    local amount = redis.call('HGET', KEYS[k + 4], lease)
    if amount then
      redis.call('HDEL', KEYS[k + 4], lease)
      redis.call('ZREM', KEYS[k + 3], lease)
      redis.call('DECRBY', KEYS[k + 5], amount)
    elseif once then
      cost = 0  -- a replay of a settlement that went through after all: charged once
    end
  end
  if cost > 0 then
    redis.call('INCRBY', KEYS[k + 1], cost)
    redis.call('EXPIREAT', KEYS[k + 1], day_expiry)
    redis.call('INCRBY', KEYS[k + 2], cost)
    redis.call('EXPIREAT', KEYS[k + 2], month_expiry)
  end
  return {redis.call('GET', KEYS[k + 1]) or '0', redis.call('GET', KEYS[k + 2]) or '0',
          math.max(0, tonumber(redis.call('GET', KEYS[k + 5]) or '0'))}
end
local out = {}
for i = 0, #ARGV / 5 - 1 do
  local a = 1 + i * 5
  local r = settle(i * 5, ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3], ARGV[a + 4] == '1')
  for _, v in ipairs(r) do out[#out + 1] = v end
end
return out
"""


class _Calls:
    """One script's calls, coalesced per turn of the event loop (:class:`proxy.Coalescer`): each
    item's share of the reply is its slice (every item answers the same number of values), turned
    into the item's answer by its ``convert`` as the reply is handed out (no future or task in between)."""

    def __init__(self, script: Any, head: list[Any], pipe: proxy.Pipe | None, within: float = 0.0) -> None:
        self._script = script
        self._head = head  # leading arguments of every call
        self._items: proxy.Coalescer[_Item] = proxy.Coalescer(self._call, _answer, _fail, pipe, within=within)

    def call(self, keys: list[str], args: list[Any], convert: Callable[[list[Any]], Any],
             orphaned: Callable[[list[Any]], None] | None = None) -> asyncio.Future[Any]:
        """``convert(this item's share of the reply)`` (a future). ``orphaned`` gets the share if the
        future was cancelled before the reply came (its caller left: undo what the call did)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._items.add((keys, args, future, convert, orphaned))
        return future

    def _call(self, batch: list[_Item]) -> Awaitable[Any]:
        keys: list[str] = []
        args = list(self._head)
        for item in batch:
            keys += item[0]
            args += item[1]
        return self._script(keys=keys, args=args)


_Item = tuple[list[str], list[Any], "asyncio.Future[Any]", "Callable[[list[Any]], Any]",
              "Callable[[list[Any]], None] | None"]


def _answer(batch: list[_Item], reply: Any) -> None:
    width = len(reply) // len(batch)
    for i, (_, _, future, convert, orphaned) in enumerate(batch):
        share = reply[i * width:(i + 1) * width]
        if not future.done():
            try:
                future.set_result(convert(share))
            except Exception as exc:
                future.set_exception(exc)
        elif orphaned is not None:
            orphaned(share)


def _fail(batch: list[_Item], exc: Exception) -> None:
    for item in batch:
        if not item[2].done():
            item[2].set_exception(exc)


class RedisBudgetStore:
    """The :class:`~.budgets.BudgetStore` of a fleet (see the module docstring).

    :param redis: a ``redis.asyncio.Redis`` client (shared with the rest of the gateway's state); give
        it a ``BlockingConnectionPool``, or a burst of admissions above the pool's size fails.
    :param scripts: where the hot-path scripts (reserve, settle) run: the gateway's
        :attr:`proxy.SharedState.pipe`, so they share their round trips with the other stores'
        (default: ``redis``).
    :param prefix: the namespace of every key this store writes.
    :param lease_ttl: seconds a reservation lasts if its request never settles (its
        worker died); longer than the longest request.
    """

    def __init__(self, redis: redis.Redis, prefix: str, *, lease_ttl: float = 900.0,
                 scripts: Any = None) -> None:
        self.redis = redis
        scripts = scripts if scripts is not None else redis
        self.prefix = prefix
        self.lease_ttl_ms = int(lease_ttl * 1000)
        pipe = scripts if isinstance(scripts, proxy.Pipe) else None
        self._reserve = _Calls(scripts.register_script(_RESERVE), [self.lease_ttl_ms], pipe)
        # Nobody waits for a settlement (the response is out): it may share a later write.
        self._settle = _Calls(scripts.register_script(_SETTLE), [], pipe, proxy.Coalescer.BACKGROUND)
        #: Per key, the fleet's (day, month, reserved) in US dollars as the last reply said: what a
        #: worker's local share starts from while Redis is unreachable, and the budget gauges.
        self.seen: dict[str, Figures] = {}
        self._keys: dict[str, tuple[int, tuple[list[str], int, int]]] = {}
        worker = os.urandom(6).hex()  # lease ids unique across the fleet without coordination
        self._lease_ids = (f"{worker}:{n:x}" for n in itertools.count(1))

    def keys(self, key: str, now: float) -> tuple[list[str], int, int]:
        """The five keys of ``key`` in the periods containing ``now``, and when the two spending keys expire
        (worked out once per key and UTC day: two calls per request ask it)."""
        day = int(now // 86400)
        known = self._keys.get(key)
        if known is not None and known[0] == day:
            return known[1]
        if len(self._keys) >= _KEYS_KEPT:
            self._keys.clear()
        found = self._keys_of(key, now)
        self._keys[key] = (day, found)
        return found

    def _keys_of(self, key: str, now: float) -> tuple[list[str], int, int]:
        _, day_end, _, month_end = periods(now)
        t = time.gmtime(now)
        base = f"{self.prefix}:{{{key}}}"
        names = [f"{base}:d:{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", f"{base}:m:{t.tm_year:04d}{t.tm_mon:02d}",
                 f"{base}:leases", f"{base}:amounts", f"{base}:reserved"]
        return names, int(day_end) + GRACE, int(month_end) + GRACE

    def reserve(self, key: str, limits: Limits, amount: float, now: float) -> asyncio.Future[Verdict]:
        """The verdict (a future); the call is queued now, so it leaves with the calls the
        other plugins queue for the same request. Cancelled before Redis answers (its client
        left), what Redis granted goes back."""
        names, _, _ = self.keys(key, now)
        lease = next(self._lease_ids)
        nano = math.ceil(round(amount * _NANO, 3))  # up, but not for float noise (1.23e-4 -> 123000)
        return self._reserve.call(names, [nano, _cap(limits.daily), _cap(limits.monthly), lease],
                                  lambda result: self._verdict(result, key, limits, lease, nano),
                                  lambda result: self._give_back(result, key, lease, now))

    def _verdict(self, result: list[Any], key: str, limits: Limits, lease: str, nano: int) -> Verdict:
        granted, period = int(result[0]), _text(result[1])
        day, month, reserved = int(result[2]) / _NANO, int(result[3]) / _NANO, int(result[4]) / _NANO
        self.seen[key] = (day, month, reserved)
        if granted:
            return Verdict(Reservation(key, nano / _NANO, lease), spent=day, reserved=reserved)
        if period == DAY:
            return Verdict(None, DAY, limits.daily or 0.0, day, reserved)
        return Verdict(None, MONTH, limits.monthly or 0.0, month, reserved)

    def settle(self, key: str, reservation: Reservation | None, cost: float, now: float, *,
               once: bool = False) -> asyncio.Future[Figures]:
        """Release ``reservation`` and charge ``cost``; the key's (day, month, reserved) after it
        (a future: the call is queued now, with the rest of this turn's).

        ``once``: a replay of a settlement whose answer was lost (it may have run): charge only
        if the reservation is still there.
        """
        names, day_expiry, month_expiry = self.keys(key, now)
        return self._settle.call(names, [
            reservation.lease if reservation is not None else "", round(cost * _NANO), day_expiry, month_expiry,
            "1" if once else "0"], lambda result: self._figures(key, result))

    def _figures(self, key: str, result: list[Any]) -> Figures:
        figures = self.seen[key] = (int(result[0]) / _NANO, int(result[1]) / _NANO, int(result[2]) / _NANO)
        return figures

    def _give_back(self, result: list[Any], key: str, lease: str, now: float) -> None:
        if int(result[0]):
            names, day_expiry, month_expiry = self.keys(key, now)
            self._settle.call(names, [lease, 0, day_expiry, month_expiry, "0"], _nothing).add_done_callback(_ignore)

    async def spent(self, key: str, now: float) -> Figures:
        names, _, _ = self.keys(key, now)
        day, month, reserved = await self.redis.mget([names[0], names[1], names[4]])
        return int(day or 0) / _NANO, int(month or 0) / _NANO, max(0, int(reserved or 0)) / _NANO

    async def load(self, spent: dict[str, tuple[float, float]], now: float) -> None:
        """Seed each key's spending from the ledger where Redis has none (Redis lost its data, or
        the fleet's first start): never overwrites what the fleet already counted."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, (day, month) in spent.items():
                names, day_expiry, month_expiry = self.keys(key, now)
                pipe.set(names[0], round(day * _NANO), nx=True, exat=day_expiry)
                pipe.set(names[1], round(month * _NANO), nx=True, exat=month_expiry)
            await pipe.execute()


def _nothing(_: list[Any]) -> None:
    return None


def _ignore(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: a lease Redis could not release lapses by itself


def _cap(value: float | None) -> int:
    return -1 if value is None else round(value * _NANO)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
