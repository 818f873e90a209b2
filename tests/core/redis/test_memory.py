"""Reading how full Redis is, against private servers with a small memory limit."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis

from gorgon.core.redis.memory import MemoryGuard, memory_fill
from redis_memory_testing import clear_junk, fill_to, redis_with_memory_limit, refuses_writes

HEADROOM_BYTES = 4_000_000


async def test_memory_fill_is_the_fraction_of_maxmemory_in_use() -> None:
    with redis_with_memory_limit(HEADROOM_BYTES) as url:
        client = aioredis.Redis.from_url(url)
        fill = await memory_fill(client)
        assert fill is not None and 0 < fill < 0.5
        await client.config_set("maxmemory", 0)
        assert await memory_fill(client) is None, "no limit"
        await client.aclose()


async def test_the_guard_turns_over_the_limit_before_redis_refuses_writes_and_back() -> None:
    with redis_with_memory_limit(HEADROOM_BYTES) as url:
        sync_client = redis.Redis.from_url(url)
        client = aioredis.Redis.from_url(url)
        guard = MemoryGuard(client, limit_fraction=0.8, check_s=0.05)
        assert not await guard.over_limit()
        fill_to(sync_client, 0.85)
        assert not refuses_writes(sync_client)

        async def guard_says(over: bool) -> None:
            async with asyncio.timeout(5):
                while await guard.over_limit() is not over:
                    await asyncio.sleep(0.02)

        await guard_says(True)
        assert guard.fill is not None and guard.fill >= 0.8
        clear_junk(sync_client)
        await guard_says(False)
        await guard.close()
        await client.aclose()
        sync_client.close()
