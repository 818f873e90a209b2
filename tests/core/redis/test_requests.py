from __future__ import annotations

import redis.asyncio as aioredis

from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.requests import cancelled_requests, request_cancel


async def test_cancel_flags(redis_async: aioredis.Redis, redis_names: RedisNames) -> None:
    await request_cancel(redis_async, redis_names, "r2", 30)
    assert await cancelled_requests(redis_async, redis_names, ["r1", "r2"]) == {"r2"}
