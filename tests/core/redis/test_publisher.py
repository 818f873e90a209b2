from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from gorgon.core.protocol import Chunk, RequestPayload, decode_chunks
from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.core.redis.publisher import EntryRef, Publication, Publisher
from gorgon.core.redis.queue import backlog, enqueue, ensure_group, read_entries


async def test_one_step_reaches_each_api_process_as_one_message(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    listener = redis_async.pubsub()
    await listener.subscribe("api-1", "api-2")
    for _ in range(2):
        await listener.get_message(timeout=5)
    chunks = [Chunk(request_id, attempt=1, seq=0, text=request_id) for request_id in ("r1", "r2", "r3")]
    channels = ["api-1", "api-2", "api-1"]
    publications = [
        Publication(chunk, True, None, 30, channel) for chunk, channel in zip(chunks, channels, strict=True)
    ]
    assert await Publisher(redis_async, redis_names).publish(publications) == [True, True, True]
    messages = [await listener.get_message(timeout=5) for _ in range(2)]
    assert await listener.get_message(timeout=0.2) is None
    await listener.aclose()
    by_channel = {message["channel"]: decode_chunks(message["data"]) for message in messages if message}
    assert by_channel == {b"api-1": [chunks[0], chunks[2]], b"api-2": [chunks[1]]}


async def test_a_final_chunk_acknowledges_its_entry_only_when_it_is_published(
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
    make_payload: Callable[[str], RequestPayload],
) -> None:
    await ensure_group(redis_async, redis_names, "m")
    for request_id in ("fenced", "current"):
        await enqueue(redis_async, redis_names, make_payload(request_id), 0)
    entries = await read_entries(redis_async, redis_names, "m", "w1", 2, None, own=False)
    (fenced_id, _), (current_id, _) = entries
    await redis_async.set(redis_names.attempt_key("fenced"), 2)
    stream = redis_names.request_stream("m")
    publications = [
        Publication(
            Chunk(request_id, attempt=1, seq=0, final=True),
            False,
            None,
            30,
            "nobody",
            EntryRef(stream, entry_id),
        )
        for request_id, entry_id in (("fenced", fenced_id), ("current", current_id))
    ]
    assert await Publisher(redis_async, redis_names).publish(publications) == [False, True]
    pending = await redis_async.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=10)
    assert [entry["message_id"].decode() for entry in pending] == [fenced_id]
    assert [entry_id.decode() for entry_id, _ in await redis_async.xrange(stream)] == [fenced_id]
    assert await backlog(redis_async, redis_names, "m") == 1
