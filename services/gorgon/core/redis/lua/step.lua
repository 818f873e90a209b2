-- Everything a worker sends after one engine step, as one script (one command, no pipeline; after
-- publish_chunks.lua): publish the chunks, acknowledge and delete the entries of cancelled requests, read the
-- cancel flags of the running ones, read new entries (never blocking). ARGV: publication count, stream, consumer,
-- entries wanted, ack count, the ack ids, then the publications' arguments; KEYS: the publications' keys, then the
-- running requests' cancel keys. Returns {published flags, cancel flags, XREADGROUP reply or nil}.
local count, stream, consumer = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local wanted, acks = tonumber(ARGV[4]), tonumber(ARGV[5])
local published = publish_chunks(1, 6 + acks, count)
if acks > 0 then
  redis.call('XACK', stream, '${consumer_group}', unpack(ARGV, 6, 5 + acks))
  redis.call('XDEL', stream, unpack(ARGV, 6, 5 + acks))
end
local flags = {}
if #KEYS > 3 * count then flags = redis.call('MGET', unpack(KEYS, 3 * count + 1, #KEYS)) end
local entries = false
if wanted > 0 then
  entries = redis.call('XREADGROUP', 'GROUP', '${consumer_group}', consumer, 'COUNT', wanted, 'STREAMS', stream, '>')
end
return {published, flags, entries}
