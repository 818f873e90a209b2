"""Chunks that Redis lost (a restart without persistence between publishing and relaying) cannot be refetched:
the API ends such a stream at once with a clear error instead of waiting for its deadline."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from gorgon.api.errors import OpenAIError
from gorgon.api.generation import Gateway
from gorgon.core.protocol import Chunk, RequestPayload, WireSampling
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.subscriber import TokenSubscriber

DEADLINE_S = 60


async def test_a_gap_that_redis_cannot_fill_ends_the_stream_with_a_502(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    subscriber = TokenSubscriber(redis_async, redis_names)
    await subscriber.start()
    gateway = Gateway(redis_async, redis_names, subscriber, max_backlog=0, retry_after_s=1)
    payload = RequestPayload(
        request_id="cmpl-gap",
        model="echo",
        sampling=WireSampling(max_tokens=10),
        deadline=time.time() + DEADLINE_S,
        stream=True,
        reply_to=subscriber.channel,
        prompt="abc",
    )
    chunks = gateway.generate(payload)
    relayed: list[str] = []

    async def relay() -> None:
        async for chunk in chunks:
            relayed.append(chunk.text)

    task = asyncio.create_task(relay())
    try:
        await asyncio.sleep(0.3)
        for seq in (0, 2):
            await redis_async.publish(subscriber.channel, Chunk("cmpl-gap", 1, seq, text=str(seq)).encode())
        started = time.monotonic()
        with pytest.raises(OpenAIError) as lost:
            await asyncio.wait_for(task, timeout=10)
        assert lost.value.status == 502 and lost.value.code == "stream_interrupted"
        assert time.monotonic() - started < 5
        assert relayed == ["0"]
    finally:
        task.cancel()
        await subscriber.close()
