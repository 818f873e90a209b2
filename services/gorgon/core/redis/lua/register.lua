-- A worker's registration, renewed by its heartbeat. KEYS: the registration, the worker index. ARGV: the record,
-- its TTL in ms. The expiry refresh first is a write that cannot grow memory, so a worker stays registered while
-- Redis is at its memory limit (see publish_chunks.lua).
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
