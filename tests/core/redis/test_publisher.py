from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from gorgon.core.protocol import Chunk, RequestPayload, decode_chunks
from gorgon.core.redis import publisher as publisher_module
from gorgon.core.redis.fencing import claim_attempt
from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.core.redis.publisher import HOLD_TTL_S, EntryRef, Publication, Publisher, StepWork
from gorgon.core.redis.queue import backlog, enqueue, ensure_group, read_entries
from gorgon.core.redis.registry import live_workers, register_worker
from gorgon.core.redis.requests import read_progress, read_result
from redis_memory_testing import push_past_limit, redis_with_memory_limit, refuses_writes

HEADROOM_BYTES = 4_000_000


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


async def test_steps_refresh_the_hold_markers_of_the_running_requests_every_second(
    redis_async: aioredis.Redis, redis_names: RedisNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = Publisher(redis_async, redis_names)
    running = StepWork(publications=[], ack_ids=[], running_ids=["r1", "r2"], read_count=0)
    await publisher.sync_step("m", "w1", running)
    for request_id in ("r1", "r2"):
        assert 0 < await redis_async.pttl(redis_names.held_key(request_id)) <= HOLD_TTL_S * 1000
    await redis_async.delete(redis_names.held_key("r1"))
    await publisher.sync_step("m", "w1", running)
    assert not await redis_async.exists(redis_names.held_key("r1")), "refreshed at most every HOLD_REFRESH_S"
    monkeypatch.setattr(publisher_module, "HOLD_REFRESH_S", 0.0)
    await publisher.sync_step("m", "w1", running)
    assert await redis_async.exists(redis_names.held_key("r1"))
    await publisher.close()


async def test_at_redis_memory_limit_a_worker_still_finishes_what_it_holds(
    make_payload: Callable[[str], RequestPayload],
) -> None:
    """With Redis past its maxmemory (no eviction), what the API writes is refused, and every write a worker
    makes for the requests it holds goes through: hold markers, progress, results, acknowledgements, a claim
    of a redelivered request and its own registration."""
    with redis_with_memory_limit(HEADROOM_BYTES) as url:
        client = aioredis.Redis.from_url(url)
        names = RedisNames("oom")
        await ensure_group(client, names, "m")
        for request_id in ("r1", "r2", "r3"):
            await enqueue(client, names, make_payload(request_id), 0)
        (e1, _), (e2, _), (e3, _) = await read_entries(client, names, "m", "w1", 3, None, own=False)
        sync_client = redis.Redis.from_url(url)
        push_past_limit(sync_client)
        assert refuses_writes(sync_client)
        with pytest.raises(OutOfMemoryError):
            await enqueue(client, names, make_payload("r4"), 0)

        publisher = Publisher(client, names)
        await publisher.sync_step("m", "w1", StepWork([], [], ["r1", "r2"], 0))
        assert await client.exists(names.held_key("r1"), names.held_key("r2")) == 2
        stream = names.request_stream("m")
        first = Chunk("r1", 1, 0, text="a")
        step = StepWork([Publication(first, True, None, 30, "api")], [], ["r1", "r2"], 0)
        assert (await publisher.sync_step("m", "w1", step)).published == [True]
        finals = [
            Chunk("r1", 1, 1, text="b", final=True, finish_reason="length"),
            Chunk("r2", 1, 0, text="ab", final=True, finish_reason="length"),
        ]
        publications = [
            Publication(chunk, chunk.request_id == "r1", chunk, 30, "api", EntryRef(stream, entry_id))
            for chunk, entry_id in zip(finals, (e1, e2), strict=True)
        ]
        assert await publisher.publish(publications) == [True, True]
        assert await read_progress(client, names, "r1", 0) == [first, finals[0]]
        assert await read_result(client, names, "r2") == finals[1]
        assert [entry_id.decode() for entry_id, _ in await client.xrange(stream)] == [e3]

        assert (await claim_attempt(client, names, "r3", 30)).attempt == 2
        await register_worker(client, names, "m", "w1", {"model": "m", "worker_id": "w1"}, ttl_s=30)
        assert await live_workers(client, names, "m") == [{"model": "m", "worker_id": "w1"}]
        await publisher.close()
        await client.aclose()
        sync_client.close()
