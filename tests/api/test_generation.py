"""The API's relay against a real Redis: order, fencing, backpressure, worker errors, and recovery of chunks
that pub/sub did not deliver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gorgon.api.errors import OpenAIError
from gorgon.api.generation import ChunkOrder, Gateway
from gorgon.core.protocol import Chunk, RequestPayload, WireError, WireSampling
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.publisher import Publication, Publisher
from gorgon.core.redis.queue import backlog
from gorgon.core.redis.subscriber import TokenSubscriber

ELSEWHERE = "a-channel-nobody-listens-to"


@pytest.fixture
async def gateway(redis_async: aioredis.Redis, redis_names: RedisNames) -> AsyncIterator[Gateway]:
    subscriber = TokenSubscriber(redis_async, redis_names)
    await subscriber.start()
    yield Gateway(redis_async, redis_names, subscriber, max_backlog=1, retry_after_s=7)
    await subscriber.close()


def request(gateway: Gateway, request_id: str, *, stream: bool) -> RequestPayload:
    return RequestPayload(
        request_id,
        "m",
        WireSampling(max_tokens=3),
        deadline=time.time() + 30,
        stream=stream,
        reply_to=gateway.reply_channel,
    )


async def relay_in_background(
    gateway: Gateway, payload: RequestPayload, redis: aioredis.Redis, names: RedisNames
) -> asyncio.Task[list[Chunk]]:
    """Start relaying and return once the request is enqueued."""

    async def collect() -> list[Chunk]:
        return [chunk async for chunk in gateway.generate(payload)]

    task = asyncio.create_task(collect())
    async with asyncio.timeout(5):
        while not await backlog(redis, names, "m"):
            await asyncio.sleep(0.01)
    return task


def test_chunk_order_drops_duplicates_and_superseded_attempts_and_reports_gaps() -> None:
    order = ChunkOrder(stream=True)
    assert order.accept(Chunk("r", attempt=1, seq=0)) is True
    assert order.accept(Chunk("r", attempt=1, seq=0)) is False
    assert order.accept(Chunk("r", attempt=2, seq=1)) is True
    assert order.accept(Chunk("r", attempt=1, seq=2)) is False, "a chunk of a superseded attempt"
    assert order.accept(Chunk("r", attempt=2, seq=3)) is None, "seq 2 is missing"


async def test_a_chunk_pub_sub_did_not_deliver_is_read_back_from_the_progress_list(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    relaying = await relay_in_background(
        gateway, request(gateway, "r1", stream=True), redis_async, redis_names
    )
    publisher = Publisher(redis_async, redis_names)
    await publisher.publish([Publication(Chunk("r1", 1, 0, text="a"), True, None, 30, ELSEWHERE)])
    final = Chunk("r1", 1, 1, text="b", final=True, finish_reason="length")
    await publisher.publish([Publication(final, True, final, 30, gateway.reply_channel)])
    relayed = await asyncio.wait_for(relaying, 5)
    assert [(chunk.seq, chunk.text) for chunk in relayed] == [(0, "a"), (1, "b")]


async def test_a_missed_final_result_is_read_from_the_result_key(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    relaying = await relay_in_background(
        gateway, request(gateway, "r1", stream=False), redis_async, redis_names
    )
    final = Chunk("r1", 1, 0, text="abc", final=True, finish_reason="length")
    await Publisher(redis_async, redis_names).publish([Publication(final, False, final, 30, ELSEWHERE)])
    (relayed,) = await asyncio.wait_for(relaying, 5)
    assert relayed.text == "abc"


async def test_worker_errors_become_openai_errors(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    relaying = await relay_in_background(
        gateway, request(gateway, "r1", stream=False), redis_async, redis_names
    )
    error = WireError("too long", "invalid_request_error", "context_length_exceeded", 400)
    failed = Chunk("r1", 1, 0, final=True, error=error)
    await Publisher(redis_async, redis_names).publish(
        [Publication(failed, False, failed, 30, gateway.reply_channel)]
    )
    with pytest.raises(OpenAIError) as raised:
        await asyncio.wait_for(relaying, 5)
    assert (raised.value.status, raised.value.code) == (400, "context_length_exceeded")


async def test_a_full_queue_is_refused_with_retry_after(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    waiting = await relay_in_background(
        gateway, request(gateway, "r1", stream=False), redis_async, redis_names
    )
    with pytest.raises(OpenAIError) as raised:
        await anext(gateway.generate(request(gateway, "r2", stream=False)))
    assert raised.value.status == 429 and raised.value.headers == {"Retry-After": "7"}
    waiting.cancel()
