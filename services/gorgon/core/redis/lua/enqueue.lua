-- XADD only while the stream is shorter than the limit: one round trip, exact across API replicas.
-- KEYS: the request stream. ARGV: the limit (0 = none), the payload field, the payload.
local limit = tonumber(ARGV[1])
if limit > 0 and redis.call('XLEN', KEYS[1]) >= limit then return false end
return redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
