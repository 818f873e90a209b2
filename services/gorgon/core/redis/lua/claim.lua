-- A redelivered request starts a new attempt. KEYS: attempt, progress, result, cancel. ARGV: the attempt's TTL.
-- Returns {attempt, finished, cancelled, chunks published so far}. The expiry refresh before the SET is a write
-- that cannot grow memory: a claim goes through at Redis's memory limit (see publish_chunks.lua).
local attempt = tonumber(redis.call('GET', KEYS[1]) or '1') + 1
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[1], attempt, 'EX', ARGV[1])
return {attempt, redis.call('EXISTS', KEYS[3]), redis.call('EXISTS', KEYS[4]), redis.call('LRANGE', KEYS[2], 0, -1)}
