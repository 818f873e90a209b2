from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gorgon.core.protocol import Chunk
from gorgon.core.redis.fencing import claim_attempt
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.publisher import Publication, Publisher
from gorgon.core.redis.requests import read_progress, read_result
from gorgon.core.redis.subscriber import TokenSubscriber


async def test_only_the_current_attempt_may_publish(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    subscriber = TokenSubscriber(redis_async, redis_names)
    await subscriber.start()
    queue = subscriber.register("r1")
    publisher = Publisher(redis_async, redis_names)
    first = Chunk("r1", attempt=1, seq=0, text="a", token_ids=(97,))
    assert await publisher.publish([Publication(first, True, None, 30, subscriber.channel)]) == [True]
    claim = await claim_attempt(redis_async, redis_names, "r1", 30)
    assert (claim.attempt, claim.finished, claim.cancelled) == (2, False, False)
    assert claim.published == [first]
    stale = Chunk("r1", attempt=1, seq=1, text="zombie")
    fresh = Chunk("r1", attempt=2, seq=1, text="b", final=True)
    assert await publisher.publish(
        [
            Publication(stale, True, None, 30, subscriber.channel),
            Publication(fresh, True, fresh, 30, subscriber.channel),
        ]
    ) == [False, True]
    received = [await asyncio.wait_for(queue.get(), 5) for _ in range(2)]
    await subscriber.close()
    assert [chunk.text for chunk in received] == ["a", "b"]
    assert await read_progress(redis_async, redis_names, "r1", 0) == [first, fresh]
    assert await read_result(redis_async, redis_names, "r1") == fresh
    assert (await claim_attempt(redis_async, redis_names, "r1", 30)).finished


async def test_a_claim_resumes_after_the_chunks_numbered_from_zero_whatever_else_the_list_holds(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    """A round trip re-sent after its script ran left a repeat, and a stale snapshot cut chunks 3 and 4 while
    the worker went on publishing: the new attempt resumes after seq 2, not after the list's length."""
    published = [Chunk("r1", 1, seq, text=str(seq)) for seq in (0, 1, 1, 2, 5, 6)]
    await redis_async.rpush(redis_names.progress_key("r1"), *(chunk.encode() for chunk in published))
    claim = await claim_attempt(redis_async, redis_names, "r1", 30)
    assert [chunk.seq for chunk in claim.published] == [0, 1, 2]
