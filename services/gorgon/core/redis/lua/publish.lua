-- The chunks of one step (after publish_chunks.lua): KEYS and ARGV hold the chunks' keys and arguments only.
return publish_chunks(1, 1, #KEYS / 3)
