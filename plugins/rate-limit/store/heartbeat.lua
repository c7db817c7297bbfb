-- Replica heartbeat: record this gateway as alive and count the live ones, on Redis's clock.
-- KEYS[1]  sorted set of replicas (member: replica id, score: last heartbeat, ms)
-- ARGV[1]  this replica's id
-- ARGV[2]  how long a heartbeat counts, ms
local ttl = tonumber(ARGV[2])
-- 1. Now, from Redis's clock, in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- 2. This replica is alive now.
redis.call('ZADD', KEYS[1], now, ARGV[1])
-- 3. Replicas silent for longer than the ttl are gone.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
-- 4. The set disappears by itself once every replica is gone.
redis.call('PEXPIRE', KEYS[1], ttl * 2)
-- 5. How many replicas are alive.
return redis.call('ZCARD', KEYS[1])
