-- Publish chunks (`count` of them, keys from `first_key`, arguments from `first_arg`). Per chunk: keys attempt,
-- progress, result; arguments attempt, reply channel, chunk, keep progress, store result, result, ttl, stream,
-- entry id. Only if its attempt is the current one (absent key = attempt 1) is the chunk appended to the progress
-- list (streaming), its final result stored, and the stream entry it finishes (if any) acknowledged and deleted,
-- so an entry is never acknowledged unless its final result was published and stored. Then one PUBLISH per reply
-- channel carries that channel's published chunks as one JSON array, in order (one message for an API process,
-- however many of its requests the step served). Returns one flag per chunk: 1 published, 0 fenced out.
-- The first published chunk first refreshes its attempt key's expiry, a write that cannot grow memory: Redis at
-- its memory limit refuses a script only when its first write could (see the package's docstring).
local function publish_chunks(first_key, first_arg, count)
  local published, batches, channels, wrote = {}, {}, {}, false
  for i = 0, count - 1 do
    local k, a = first_key + 3 * i, first_arg + 9 * i
    if (redis.call('GET', KEYS[k]) or '1') ~= ARGV[a] then
      published[i + 1] = 0
    else
      if not wrote then
        redis.call('EXPIRE', KEYS[k], ARGV[a + 6])
        wrote = true
      end
      if ARGV[a + 3] == '1' then
        if redis.call('RPUSH', KEYS[k + 1], ARGV[a + 2]) == 1 then redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 6]) end
      end
      if ARGV[a + 4] == '1' then redis.call('SET', KEYS[k + 2], ARGV[a + 5], 'EX', ARGV[a + 6]) end
      if ARGV[a + 7] ~= '' then
        redis.call('XACK', ARGV[a + 7], '${consumer_group}', ARGV[a + 8])
        redis.call('XDEL', ARGV[a + 7], ARGV[a + 8])
      end
      local channel = ARGV[a + 1]
      if batches[channel] == nil then
        batches[channel] = {}
        channels[#channels + 1] = channel
      end
      table.insert(batches[channel], ARGV[a + 2])
      published[i + 1] = 1
    end
  end
  for _, channel in ipairs(channels) do
    redis.call('PUBLISH', channel, '[' .. table.concat(batches[channel], ',') .. ']')
  end
  return published
end
