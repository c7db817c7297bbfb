-- Sliding log: an exact limit of `limit` requests per `windowMs`, in one atomic round trip.
-- Each admitted request is one sorted-set entry scored by its admit time (microseconds, Redis's
-- clock). A rejected request writes nothing.
--
-- KEYS[1]  the log: sorted set, score = admit time in µs, member = "<µs>-<seq>" (unique)
-- KEYS[2]  the member sequence: a counter that makes members unique within one microsecond
--          (both keys carry the same hash tag, so a Redis Cluster keeps them in one slot)
-- ARGV[1]  limit: the most requests admitted in any window (integer >= 1)
-- ARGV[2]  windowMs: the window length in milliseconds (integer >= 1)
--
-- Returns {allowed (0|1), remaining, retryAfterMs, resetMs}, all integers.

-- Redis < 5 replicated scripts verbatim, which forbids writes after TIME; effects replication
-- (the only mode since Redis 7, where this call is a no-op) replicates the writes themselves.
if redis.replicate_commands then redis.replicate_commands() end

-- 1. Arguments: every ARGV is a string until converted.
local limit = tonumber(ARGV[1])
local windowMs = tonumber(ARGV[2])
if not limit or not windowMs or limit < 1 or windowMs < 1 then
  return redis.error_reply('ERR gatehouse sliding-log: limit and windowMs must be numbers >= 1')
end

-- Integers past 1e14 would print in exponent form ("%.14g") and lose digits: format them.
local function int (n) return string.format('%.0f', n) end
-- Whole milliseconds (rounded up) from microseconds, kept within [lo, windowMs].
local function ms (us, lo)
  local v = math.ceil(us / 1000)
  if v < lo then v = lo end
  if v > windowMs then v = windowMs end
  return v
end

-- 2. Now, by Redis's own clock, so every gateway replica agrees whatever its own clock says.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = windowMs * 1000

-- 3. Trim: an entry admitted at s counts while now < s + window; drop those with s <= now - window.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - window))

-- 4. Count what is left in the window.
local count = redis.call('ZCARD', KEYS[1])

-- 5. Admit or reject. Only an admitted request is written; both keys expire when this newest
--    entry leaves the window, so an idle limit costs no memory.
local allowed = 0
if count < limit then
  local seq = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], int(now), int(now) .. '-' .. seq)
  redis.call('PEXPIRE', KEYS[1], windowMs)
  redis.call('PEXPIRE', KEYS[2], windowMs)
  count = count + 1
  allowed = 1
end

-- 6. Remaining: further requests admitted right now (0 when this one was rejected).
local remaining = limit - count
if remaining < 0 then remaining = 0 end

-- 7. retryAfterMs (only when no slot is left): the next slot frees when the entry at index
--    count - limit leaves the window; that is the oldest entry unless the limit was lowered.
local retryAfterMs = 0
if remaining == 0 then
  local e = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  retryAfterMs = ms(tonumber(e[2]) + window - now, 1)
end

-- 8. resetMs: when the newest entry leaves, the whole budget is back.
local resetMs = 0
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] then resetMs = ms(tonumber(newest[2]) + window - now, 0) end

return { allowed, remaining, retryAfterMs, resetMs }
