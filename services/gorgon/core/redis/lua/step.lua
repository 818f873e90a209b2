-- Everything a worker sends after one engine step, as one script (one command, no pipeline; after
-- publish_chunks.lua): publish the chunks, acknowledge and delete the entries of cancelled requests, read the
-- cancel flags of the running ones, refresh their hold markers (when `hold ms` > 0), read new entries (never
-- blocking). ARGV: publication count, stream, consumer, entries wanted, ack count, hold ms, the ack ids, then the
-- publications' arguments; KEYS: the publications' keys, then the running requests' cancel keys, then (when
-- refreshing) their hold keys. Returns {published flags, cancel flags, XREADGROUP reply or nil}.
local count, stream, consumer = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local wanted, acks, hold_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local published = publish_chunks(1, 7 + acks, count)
if acks > 0 then
  redis.call('XACK', stream, '${consumer_group}', unpack(ARGV, 7, 6 + acks))
  redis.call('XDEL', stream, unpack(ARGV, 7, 6 + acks))
end
local running = #KEYS - 3 * count
if hold_ms > 0 then running = running / 2 end
local flags = {}
if running > 0 then flags = redis.call('MGET', unpack(KEYS, 3 * count + 1, 3 * count + running)) end
if hold_ms > 0 then
  -- the expiry refresh comes first: it cannot grow memory (see publish_chunks.lua)
  for i = 3 * count + running + 1, #KEYS do
    if redis.call('PEXPIRE', KEYS[i], hold_ms) == 0 then redis.call('SET', KEYS[i], '1', 'PX', hold_ms) end
  end
end
local entries = false
if wanted > 0 then
  entries = redis.call('XREADGROUP', 'GROUP', '${consumer_group}', consumer, 'COUNT', wanted, 'STREAMS', stream, '>')
end
return {published, flags, entries}
