-- Drop index entries whose registration key expired (checked inside Redis: a worker re-registering at the same
-- moment keeps its entry). KEYS: the worker index, then the registration keys found expired.
for _, key in ipairs(KEYS) do
  if key ~= KEYS[1] and redis.call('EXISTS', key) == 0 then redis.call('SREM', KEYS[1], key) end
end
