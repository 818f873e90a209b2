from __future__ import annotations

import redis.asyncio as aioredis

from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.rate_limit import count_request


async def test_requests_are_counted_per_key_in_fixed_windows_that_expire(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    counts = [await count_request(redis_async, redis_names, "k1", 60, now) for now in (600.0, 630.0, 659.9)]
    assert counts == [1, 2, 3]
    assert await count_request(redis_async, redis_names, "k2", 60, 630.0) == 1, "each key counts alone"
    assert await count_request(redis_async, redis_names, "k1", 60, 660.0) == 1, "a new window starts at zero"
    ttl = await redis_async.ttl(redis_names.rate_limit_key("k1", 11))
    assert 60 < ttl <= 120
