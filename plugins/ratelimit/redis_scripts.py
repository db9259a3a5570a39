"""The Lua scripts of :class:`~.redis_store.RedisBucketStore`: each runs atomically in Redis.

Each script serves a batch: the admissions (or settlements) that a worker made
while its previous call was on its way, in order, each one all or nothing on
its own keys. A request's claims travel as one argument ("rate burst amount"
per key) and its answer as one string: few arguments to encode and one reply to
parse keep the worker's CPU per call low.

Time is Redis's ``TIME``, read once per script: every worker's request is judged
on one clock.

Keys: a bucket that refills is a hash ``{l: level, t: updated}``; a concurrency
limit (``rate`` 0) is a sorted set of leases (member: lease id, score: when it
lapses).
"""

from __future__ import annotations

__all__ = ["LOWER", "RENEW", "SETTLE", "TAKE"]

_PRELUDE = """
local function fmt(x) return string.format('%.17g', x) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local function numbers(text)
  local out, n = {}, 0
  for x in string.gmatch(text, '%S+') do n = n + 1; out[n] = tonumber(x) end
  return out
end
local function level_of(key, rate, burst)
  local s = redis.call('HMGET', key, 'l', 't')
  if not s[1] then return burst end
  return math.min(burst, tonumber(s[1]) + math.max(0, now - tonumber(s[2])) * rate)
end
-- A bucket lives until it would be full again, plus the margin; a full one is deleted (the same thing).
local function store_level(key, rate, burst, level, margin)
  if level >= burst then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'l', fmt(level), 't', fmt(now))
    redis.call('PEXPIRE', key, math.max(1, math.ceil(((burst - level) / rate + margin) * 1000)))
  end
end
"""

#: KEYS: every request's buckets, one request after the other.
#: ARGV: lease seconds, TTL margin seconds, then per request: its number of keys, its claims,
#: 1 take / 0 peek, its lease id. Returns per request "granted blocking wait level...".
TAKE = _PRELUDE + """
local lease_s, margin = tonumber(ARGV[1]), tonumber(ARGV[2])
local lease_ttl = math.ceil((lease_s + margin) * 1000)
local replies, k, a = {}, 0, 3
while a <= #ARGV do
  local n, c, take, lease = tonumber(ARGV[a]), numbers(ARGV[a + 1]), ARGV[a + 2] == '1', ARGV[a + 3]
  local levels, wait, blocking = {}, 0, -1
  for i = 1, n do
    local key, rate, burst, amount = KEYS[k + i], c[3 * i - 2], c[3 * i - 1], c[3 * i]
    local level
    if rate > 0 then
      level = level_of(key, rate, burst)
    else
      level = burst - redis.call('ZCOUNT', key, '(' .. fmt(now), '+inf')
    end
    levels[i] = level
    local short = amount - level
    if short > 1e-9 then
      local needed = math.huge
      if rate > 0 and amount <= burst then needed = (short - 5e-10) / rate end
      if blocking < 0 or needed > wait then wait, blocking = needed, i - 1 end
    end
  end
  if take and blocking < 0 then
    for i = 1, n do
      local key, rate, burst, amount = KEYS[k + i], c[3 * i - 2], c[3 * i - 1], c[3 * i]
      levels[i] = levels[i] - amount
      if rate > 0 then
        store_level(key, rate, burst, levels[i], margin)
      else
        redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
        redis.call('ZADD', key, fmt(now + lease_s), lease)
        if redis.call('PTTL', key) < lease_ttl then redis.call('PEXPIRE', key, lease_ttl) end
      end
    end
  end
  local out = {blocking < 0 and '1' or '0', tostring(blocking), fmt(wait)}
  for i = 1, n do out[i + 3] = fmt(levels[i]) end
  replies[#replies + 1] = table.concat(out, ' ')
  k, a = k + n, a + 4
end
return replies
"""

#: KEYS: every settlement's buckets. ARGV: TTL margin seconds, then per settlement: its number
#: of keys, its claims (amount: what goes back; negative: an overrun charged), its lease id.
SETTLE = _PRELUDE + """
local margin = tonumber(ARGV[1])
local k, a = 0, 2
while a <= #ARGV do
  local n, c, lease = tonumber(ARGV[a]), numbers(ARGV[a + 1]), ARGV[a + 2]
  for i = 1, n do
    local key, rate, burst, amount = KEYS[k + i], c[3 * i - 2], c[3 * i - 1], c[3 * i]
    if rate > 0 then
      store_level(key, rate, burst, math.min(burst, level_of(key, rate, burst) + amount), margin)
    else
      redis.call('ZREM', key, lease)
    end
  end
  k, a = k + n, a + 3
end
return 0
"""

#: KEYS: lease sets. ARGV: lease seconds, TTL margin seconds, then the lease id per key.
#: Extends the leases still live (a lapsed one may have been granted to someone else). Returns how many.
RENEW = _PRELUDE + """
local lease_s, margin = tonumber(ARGV[1]), tonumber(ARGV[2])
local lease_ttl = math.ceil((lease_s + margin) * 1000)
local kept = 0
for i, key in ipairs(KEYS) do
  local lease = ARGV[i + 2]
  local score = redis.call('ZSCORE', key, lease)
  if score and tonumber(score) > now then
    redis.call('ZADD', key, fmt(now + lease_s), lease)
    if redis.call('PTTL', key) < lease_ttl then redis.call('PEXPIRE', key, lease_ttl) end
    kept = kept + 1
  end
end
return kept
"""

#: KEYS: buckets that refill. ARGV: TTL margin seconds, then per key "rate burst level": each bucket
#: is lowered to at most its level (what the upstream says is left), never raised.
LOWER = _PRELUDE + """
local margin = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local c = numbers(ARGV[i + 1])
  local rate, burst, cap = c[1], c[2], c[3]
  if rate > 0 and cap < level_of(key, rate, burst) then store_level(key, rate, burst, cap, margin) end
end
return 0
"""
