from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from gorgon.core.protocol import Chunk
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.subscriber import TokenSubscriber


async def test_the_subscriber_subscribes_again_after_losing_its_connection(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    def pubsub_ids(clients: list[dict[str, Any]]) -> set[str]:
        return {str(client["id"]) for client in clients}

    before = pubsub_ids(await redis_async.client_list(_type="pubsub"))
    subscriber = TokenSubscriber(redis_async, redis_names)
    await subscriber.start()
    queue = subscriber.register("r1")
    (own,) = pubsub_ids(await redis_async.client_list(_type="pubsub")) - before
    await redis_async.client_kill_filter(_id=own)
    async with asyncio.timeout(10):
        while True:
            await asyncio.sleep(0.05)
            current = pubsub_ids(await redis_async.client_list(_type="pubsub")) - before
            if current and own not in current:
                break
    await redis_async.publish(subscriber.channel, Chunk("r1", attempt=1, seq=0, text="again").encode())
    chunk = await asyncio.wait_for(queue.get(), 5)
    await subscriber.close()
    assert chunk.text == "again"
