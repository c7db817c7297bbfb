-- Sliding window (Cloudflare-style approximation), in one atomic round trip, O(1) memory per key.
-- Time is cut into fixed windows aligned on multiples of the window length (Redis's clock). A
-- request is judged by
--   estimate = previous window's count × (share of the previous window still inside the sliding
--              window) + this window's count
-- and admitted while estimate < limit, i.e. the previous window's requests are assumed evenly
-- spread. Integer arithmetic in µs × counts (exact while limit × windowMs × 1000 < 2^53; the
-- caller checks that). A rejected request writes nothing.
--
-- KEYS[1]  this window's counter: hash {s = window start in µs, c = count}
-- KEYS[2]  the previous window's counter, same shape (same hash tag as KEYS[1])
-- ARGV[1]  limit: the most requests admitted (integer >= 1)
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
  return redis.error_reply('ERR gatehouse sliding-window: limit and windowMs must be numbers >= 1')
end

-- Integers past 1e14 would print in exponent form ("%.14g") and lose digits: format them.
local function int (n) return string.format('%.0f', n) end
-- floor(a / b) for non-negative integers, exact even where the float quotient rounds up.
local function idiv (a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
-- Whole milliseconds, rounded up, from microseconds.
local function ms (us) return idiv(us + 999, 1000) end

-- 2. Now, by Redis's own clock, and the fixed window it falls in.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = windowMs * 1000
local start = now - (now % window)

-- 3. Read this window's counter.
local cur = redis.call('HMGET', KEYS[1], 's', 'c')
local curStart = tonumber(cur[1])
local curCount = tonumber(cur[2]) or 0

-- 4. Roll over when the counter belongs to an earlier window: it becomes the previous window's
--    counter if it is the window just before, else both counters are stale. (If Redis's clock
--    stepped back into an earlier window, keep counting in the newer one rather than forget it.)
if curStart and curStart ~= start then
  if curStart > start then
    start = curStart
  elseif curStart == start - window then
    redis.call('RENAME', KEYS[1], KEYS[2])
    curCount = 0
  else
    redis.call('DEL', KEYS[1], KEYS[2])
    curCount = 0
  end
end

-- 5. Read the previous window's count; it counts only if it is the window just before.
local prev = redis.call('HMGET', KEYS[2], 's', 'c')
local prevCount = 0
if tonumber(prev[1]) == start - window then prevCount = tonumber(prev[2]) or 0 end

-- 6. The estimate, scaled by the window (µs): prevCount × (window − elapsed) + curCount × window.
local elapsed = now - start
if elapsed < 0 then elapsed = 0 end
local scaled = prevCount * (window - elapsed) + curCount * window
local budget = limit * window

-- 7. Admit while the estimate is below the limit; count the request in this window's counter,
--    which must live until the end of the next window (while it still weighs as "previous").
local allowed = 0
if scaled < budget then
  curCount = redis.call('HINCRBY', KEYS[1], 'c', 1)
  redis.call('HSET', KEYS[1], 's', int(start))
  redis.call('PEXPIRE', KEYS[1], ms(start + 2 * window - now))
  scaled = scaled + window
  allowed = 1
end

-- 8. Remaining: requests admitted right now after this one = ceil(limit − estimate), >= 0.
local remaining = 0
if scaled < budget then remaining = idiv(budget - scaled + window - 1, window) end

-- 9. retryAfterMs (only when no slot is left): the first instant the estimate drops below the limit.
local retryAfterMs = 0
if remaining == 0 then
  local waitUs
  if curCount >= limit or prevCount == 0 then
    -- This window is full: in the next one, curCount × (window − e') < limit × window once
    -- e' > window − limit × window / curCount.
    local c = curCount
    if c < 1 then c = 1 end
    local e = window - idiv(budget, c)
    if e < 0 then e = 0 end
    waitUs = (start + window - now) + e + 1
  else
    -- The previous window's weight must fall: prevCount × (window − e) + curCount × window
    -- < limit × window once e > window − (limit − curCount) × window / prevCount.
    local e = window - idiv((limit - curCount) * window, prevCount)
    waitUs = e + 1 - elapsed
  end
  if waitUs < 1 then waitUs = 1 end
  retryAfterMs = ms(waitUs)
end

-- 10. resetMs: this window's requests weigh until the end of the next window; the previous
--     window's until the end of this one.
local resetMs = 0
if curCount > 0 then
  resetMs = ms(start + 2 * window - now)
elseif prevCount > 0 then
  resetMs = ms(start + window - now)
end

return { allowed, remaining, retryAfterMs, resetMs }
