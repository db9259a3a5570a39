"""Circuit breakers shared by every worker and host: :class:`RedisBreakerStore`.

The same breaker as :class:`~.breaker.Breaker` (consecutive failures, failure ratio
over a rolling window of 10 buckets, cooldown, one half-open probe), with its state,
window and probe slot in Redis, so that failures seen by any worker open it for all
and **one** probe goes out fleet-wide, not one per worker. Each operation is one
atomic Lua script on Redis's own clock (``TIME``), never the workers'.

Keys: ``<prefix>breaker:<model>``, a hash (``state``, ``open_until``, ``consecutive``,
``probe_until`` and the window's ``t:<bucket>``/``f:<bucket>`` counts), expiring
``ttl_s`` after its last change: an idle breaker vanishes, which is a closed one.
The probe slot is a lease (``probe_lease_s``): a worker that dies holding it does
not block probing for ever.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from .breaker import CLOSED, HALF_OPEN, OPEN
from .settings import BreakerSettings

__all__ = ["CLAIM", "READ", "RECORD_MANY", "RELEASE", "USE", "RedisBreakerStore", "record_args"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] breaker; ARGV: probe lease ms, ttl ms -> {allowed, probe, state}
_ALLOW = _NOW + """
local state = tonumber(redis.call('HGET', KEYS[1], 'state') or '0')
if state == 0 then return {1, 0, 0} end
if state == 2 then
  if now < tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0') then return {0, 0, 2} end
  state = 1
  redis.call('HSET', KEYS[1], 'state', 1)
end
if tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0') > now then return {0, 0, state} end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, 1, state}
"""

# KEYS[1] breaker -> seconds until it may be tried again
_RETRY_IN = _NOW + """
local state = tonumber(redis.call('HGET', KEYS[1], 'state') or '0')
if state == 2 then
  return tostring(math.max(0, tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0') - now) / 1000)
end
if state == 1 and tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0') > now then return '1' end
return '0'
"""


# The fleet's breakers as every worker mirrors them (:mod:`.fleet`): state changes are published
# on a channel ("<state> <ms left> <holder or -> <model>"), outcomes are recorded in batches, and the
# half-open probe slot is claimed by one worker (``holder``) ahead of the request that uses it.

# KEYS: one breaker per outcome. ARGV: failures, ratio (-1: none), min requests, window ms, cooldown ms,
# ttl ms, channel; then per outcome: model, failed (0/1), probe (0/1).
# Returns per outcome: state after it, ms left (open: until it may be probed), 1 if it changed the state.
RECORD_MANY = _NOW + """
local failures, ratio, min_requests = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, cooldown, ttl, channel = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local width = math.max(1, math.floor(window / 10))
local function open(key, model)
  local fields = redis.call('HKEYS', key)
  for _, f in ipairs(fields) do
    if f ~= 'state' and f ~= 'open_until' then redis.call('HDEL', key, f) end
  end
  redis.call('HSET', key, 'state', 2, 'open_until', now + cooldown)
  redis.call('PEXPIRE', key, ttl)
  redis.call('PUBLISH', channel, '2 ' .. cooldown .. ' - ' .. model)
  return 2, cooldown, 1
end
local function left_of(key, state)
  if state == 2 then return math.max(0, tonumber(redis.call('HGET', key, 'open_until') or '0') - now) end
  return 0
end
local function record(key, model, failed, probe)
  local state = tonumber(redis.call('HGET', key, 'state') or '0')
  if probe then
    redis.call('HDEL', key, 'probe_until', 'holder')
    if state ~= 1 then return state, left_of(key, state), 0 end
    if failed then return open(key, model) end
    redis.call('DEL', key)
    redis.call('PUBLISH', channel, '0 0 - ' .. model)
    return 0, 0, 1
  end
  if state ~= 0 then return state, left_of(key, state), 0 end
  local start = now - now % width
  local horizon = now - window
  local total, fails = 0, 0
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local f, v = flat[i], tonumber(flat[i + 1])
    local kind, at = string.sub(f, 1, 2), tonumber(string.sub(f, 3))
    if (kind == 't:' or kind == 'f:') and at then
      if at <= horizon then redis.call('HDEL', key, f)
      elseif kind == 't:' then total = total + v
      else fails = fails + v end
    end
  end
  redis.call('HINCRBY', key, 't:' .. start, 1)
  total = total + 1
  if failed then
    redis.call('HINCRBY', key, 'f:' .. start, 1)
    fails = fails + 1
  end
  redis.call('PEXPIRE', key, ttl)
  if not failed then
    redis.call('HSET', key, 'consecutive', 0)
    return 0, 0, 0
  end
  local consecutive = redis.call('HINCRBY', key, 'consecutive', 1)
  if consecutive >= failures or (ratio >= 0 and total >= min_requests and fails >= ratio * total) then
    return open(key, model)
  end
  return 0, 0, 0
end
local out = {}
for i, key in ipairs(KEYS) do
  local a = 8 + (i - 1) * 3
  local state, left, changed = record(key, ARGV[a], ARGV[a + 1] == '1', ARGV[a + 2] == '1')
  out[#out + 1] = state
  out[#out + 1] = left
  out[#out + 1] = changed
end
return out
"""

# KEYS[1] breaker; ARGV: hold ms, ttl ms, channel, model, instance.
# Returns state, ms left (open: its cooldown; half-open: the slot's hold), 1 if the slot is the caller's,
# 1 if this call turned it half-open.
CLAIM = _NOW + """
local key, hold = KEYS[1], tonumber(ARGV[1])
local state = tonumber(redis.call('HGET', key, 'state') or '0')
if state == 0 then return {0, 0, 0, 0} end
local changed = 0
if state == 2 then
  local left = tonumber(redis.call('HGET', key, 'open_until') or '0') - now
  if left > 0 then return {2, left, 0, 0} end
  redis.call('HSET', key, 'state', 1)
  changed = 1
end
local probe_until = tonumber(redis.call('HGET', key, 'probe_until') or '0')
if probe_until > now then
  local mine = redis.call('HGET', key, 'holder') == ARGV[5] and 1 or 0
  return {1, probe_until - now, mine, changed}
end
redis.call('HSET', key, 'probe_until', now + hold, 'holder', ARGV[5])
redis.call('PEXPIRE', key, ARGV[2])
redis.call('PUBLISH', ARGV[3], '1 ' .. hold .. ' ' .. ARGV[5] .. ' ' .. ARGV[4])
return {1, hold, 1, changed}
"""

# KEYS[1] breaker; ARGV: lease ms, instance. The claimed slot is used: it lasts the probe's lease.
USE = _NOW + """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
end
return 0
"""

# KEYS[1] breaker; ARGV: channel, model, instance ('': whoever holds it). Frees the probe slot.
RELEASE = """
local holder = redis.call('HGET', KEYS[1], 'holder')
if ARGV[3] == '' or holder == ARGV[3] then
  redis.call('HDEL', KEYS[1], 'probe_until', 'holder')
  redis.call('PUBLISH', ARGV[1], '1 0 - ' .. ARGV[2])
end
return 0
"""

# KEYS: breakers. Returns per breaker: state, ms left (open: cooldown; half-open: the slot's hold), holder.
READ = _NOW + """
local out = {}
for _, key in ipairs(KEYS) do
  local s = redis.call('HMGET', key, 'state', 'open_until', 'probe_until', 'holder')
  local state = tonumber(s[1] or '0')
  local left = 0
  if state == 2 then left = math.max(0, tonumber(s[2] or '0') - now) end
  if state == 1 then left = math.max(0, tonumber(s[3] or '0') - now) end
  out[#out + 1] = state
  out[#out + 1] = left
  out[#out + 1] = s[4] or ''
end
return out
"""

class RedisBreakerStore:
    """Circuit breakers of every target, in Redis, shared by all the clients of ``prefix``.

    :param redis: a ``redis.asyncio.Redis`` client (the caller owns and closes it).
    :param prefix: namespaces every key (e.g. ``"floodgate:"``).
    :param settings: the breakers' thresholds (``plugins.retry.breaker``).
    :param probe_lease_s: how long a half-open probe holds its slot at most.
    """

    def __init__(self, redis: Redis, prefix: str, *, settings: BreakerSettings | None = None,
                 probe_lease_s: float = 300.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.settings = settings or BreakerSettings()
        s = self.settings
        self._lease_ms = int(probe_lease_s * 1000)
        self._ttl_ms = int(2 * max(s.window_s, s.cooldown_s, probe_lease_s) * 1000)
        self.channel = f"{prefix}breakers"
        self._record_args: tuple[Any, ...] = record_args(s, self._ttl_ms, self.channel)
        self._allow = redis.register_script(_ALLOW)
        self._record = redis.register_script(RECORD_MANY)
        self._release = redis.register_script(RELEASE)
        self._retry_in = redis.register_script(_RETRY_IN)

    def key(self, model: str) -> str:
        return f"{self.prefix}breaker:{model}"

    async def allow(self, model: str) -> tuple[bool, bool]:
        """Whether a request may use ``model`` now, and whether it got the (fleet's one) probe slot."""
        allowed, probe, _ = await self._allow(keys=[self.key(model)], args=[self._lease_ms, self._ttl_ms])
        return bool(allowed), bool(probe)

    async def record(self, model: str, failed: bool, *, probe: bool) -> int:
        """One outcome; returns the state after it (``CLOSED``, ``HALF_OPEN`` or ``OPEN``).

        Only the probe decides a half-open breaker; other outcomes are ignored while it
        is not closed (they started before it opened)."""
        reply = await self._record(keys=[self.key(model)], args=[*self._record_args, model, int(failed), int(probe)])
        return int(reply[0])

    async def release(self, model: str) -> None:
        """The probe holder ended without an outcome: let the next request probe."""
        await self._release(keys=[self.key(model)], args=[self.channel, model, ""])

    async def state(self, model: str) -> int:
        value = await self.redis.hget(self.key(model), "state")
        state = int(value) if value is not None else CLOSED
        assert state in (CLOSED, HALF_OPEN, OPEN)
        return state

    async def retry_in(self, model: str) -> float:
        """Seconds until ``model`` may be tried again (0 when it may now)."""
        return float(await self._retry_in(keys=[self.key(model)]))


def record_args(settings: BreakerSettings, ttl_ms: int, channel: str) -> tuple[Any, ...]:
    """:data:`RECORD_MANY`'s leading arguments: the thresholds, the keys' lifetime, the channel."""
    s = settings
    return (s.failures, -1 if s.failure_ratio is None else s.failure_ratio, s.min_requests, int(s.window_s * 1000),
            int(s.cooldown_s * 1000), ttl_ms, channel)
