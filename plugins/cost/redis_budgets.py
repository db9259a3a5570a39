"""Fleet-wide budgets in Redis: every worker of every host reserves against the same numbers.

One atomic Lua script per admission (expire dead leases, read spent and reserved,
apply the rule of :mod:`.budgets`, add the lease) and one per settlement (drop the
lease, add the cost to the current day and month): one round trip each.

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

import math
import os
import time
from typing import Any

import redis.asyncio as redis

from .budgets import DAY, MONTH, Limits, Reservation, Verdict
from .report import periods

__all__ = ["GRACE", "RedisBudgetStore"]

#: Seconds a period's spending outlives the period (a late read still finds it).
GRACE = 3600
_NANO = 1_000_000_000

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #dead > 0 then
  local freed = 0
  for _, id in ipairs(dead) do
    freed = freed + (tonumber(redis.call('HGET', KEYS[4], id)) or 0)
    redis.call('HDEL', KEYS[4], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('DECRBY', KEYS[5], freed)
end
local day = tonumber(redis.call('GET', KEYS[1]) or '0')
local month = tonumber(redis.call('GET', KEYS[2]) or '0')
local reserved = math.max(0, tonumber(redis.call('GET', KEYS[5]) or '0'))
local amount = tonumber(ARGV[1])
local caps = {{tonumber(ARGV[2]), day, 'day'}, {tonumber(ARGV[3]), month, 'month'}}
for _, c in ipairs(caps) do
  if c[1] >= 0 then
    local used = c[2] + reserved
    if used >= c[1] or used + amount > c[1] then
      return {0, c[3], c[2], reserved}
    end
  end
end
local ttl = tonumber(ARGV[5])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[4])
redis.call('HSET', KEYS[4], ARGV[4], amount)
redis.call('INCRBY', KEYS[5], amount)
for i = 3, 5 do redis.call('PEXPIRE', KEYS[i], ttl * 2) end
return {1, 'day', day, reserved}
"""

_SETTLE = """
if ARGV[1] ~= '' then
  local amount = redis.call('HGET', KEYS[4], ARGV[1])
  if amount then
    redis.call('HDEL', KEYS[4], ARGV[1])
    redis.call('ZREM', KEYS[3], ARGV[1])
    redis.call('DECRBY', KEYS[5], amount)
  end
end
local cost = tonumber(ARGV[2])
if cost > 0 then
  redis.call('INCRBY', KEYS[1], cost)
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
  redis.call('INCRBY', KEYS[2], cost)
  redis.call('EXPIREAT', KEYS[2], ARGV[4])
end
return 1
"""


class RedisBudgetStore:
    """The :class:`~.budgets.BudgetStore` of a fleet (see the module docstring).

    :param redis: a ``redis.asyncio.Redis`` client (shared with the rest of the gateway's state); give
        it a ``BlockingConnectionPool``, or a burst of admissions above the pool's size fails.
    :param prefix: the namespace of every key this store writes.
    :param lease_ttl: seconds a reservation lasts if its request never settles (its
        worker died); longer than the longest request.
    """

    def __init__(self, redis: redis.Redis, prefix: str, *, lease_ttl: float = 900.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    def keys(self, key: str, now: float) -> tuple[list[str], int, int]:
        """The five keys of ``key`` in the periods containing ``now``, and when the two spending keys expire."""
        _, day_end, _, month_end = periods(now)
        t = time.gmtime(now)
        base = f"{self.prefix}:{{{key}}}"
        names = [f"{base}:d:{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", f"{base}:m:{t.tm_year:04d}{t.tm_mon:02d}",
                 f"{base}:leases", f"{base}:amounts", f"{base}:reserved"]
        return names, int(day_end) + GRACE, int(month_end) + GRACE

    async def reserve(self, key: str, limits: Limits, amount: float, now: float) -> Verdict:
        names, _, _ = self.keys(key, now)
        lease = os.urandom(8).hex()
        nano = math.ceil(round(amount * _NANO, 3))  # up, but not for float noise (1.23e-4 -> 123000)
        result: list[Any] = await self._reserve(keys=names, args=[
            nano, _cap(limits.daily), _cap(limits.monthly), lease, self.lease_ttl_ms])
        granted, period, spent, reserved = int(result[0]), _text(result[1]), int(result[2]), int(result[3])
        if granted:
            return Verdict(Reservation(key, nano / _NANO, lease), spent=spent / _NANO, reserved=reserved / _NANO)
        cap = limits.daily if period == DAY else limits.monthly
        return Verdict(None, DAY if period == DAY else MONTH, cap or 0.0, spent / _NANO, reserved / _NANO)

    async def settle(self, key: str, reservation: Reservation | None, cost: float, now: float) -> None:
        names, day_expiry, month_expiry = self.keys(key, now)
        await self._settle(keys=names, args=[
            reservation.lease if reservation is not None else "", round(cost * _NANO), day_expiry, month_expiry])

    async def spent(self, key: str, now: float) -> tuple[float, float, float]:
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


def _cap(value: float | None) -> int:
    return -1 if value is None else round(value * _NANO)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
