"""The API's view of the served models, against real worker registrations in Redis: requests use the cache
while it is refreshed in the background, a model the cache does not know is looked up before a 404, and the
configured models are served with no worker up."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gorgon.api.errors import OpenAIError
from gorgon.api.registry import ModelRegistry, ServedModel
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.registry import register_worker

CACHE_S = 0.1


async def register(redis: aioredis.Redis, names: RedisNames, model: str, context_length: int) -> None:
    info = {"model": model, "worker_id": f"w-{model}", "context_length": context_length}
    await register_worker(redis, names, model, f"w-{model}", info, ttl_s=30)


async def test_a_stale_cache_answers_at_once_and_is_refreshed_behind_the_request(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    registry = ModelRegistry(redis_async, redis_names, CACHE_S, default_model=None)
    await register(redis_async, redis_names, "m", 100)
    assert (await registry.resolve("m", 1)).context_length == 100
    await register(redis_async, redis_names, "m", 200)
    await asyncio.sleep(CACHE_S * 2)
    assert (await registry.resolve("m", 1)).context_length == 100, "answered from the stale cache"
    async with asyncio.timeout(5):
        while (await registry.resolve("m", 1)).context_length != 200:
            await asyncio.sleep(0.01)
    await registry.close()


async def test_a_model_missing_from_the_cache_is_looked_up_before_it_is_refused(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    registry = ModelRegistry(redis_async, redis_names, cache_s=60, default_model=None)
    with pytest.raises(OpenAIError) as nothing_served:
        await registry.resolve(None, 1)
    assert nothing_served.value.status == 503
    await register(redis_async, redis_names, "m", 100)
    await asyncio.sleep(CACHE_S * 2)
    assert (await registry.resolve("m", 1)).name == "m", "found although the cache (60 s) said no workers"
    with pytest.raises(OpenAIError) as unknown:
        await registry.resolve("other", 1)
    assert unknown.value.status == 404
    await registry.close()


async def test_configured_models_are_served_with_no_worker_and_live_workers_refine_them(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    registry = ModelRegistry(redis_async, redis_names, 0.0, default_model=None, configured={"m": 4096})
    assert await registry.resolve(None, 1) == ServedModel("m", 4096, 0)
    assert await registry.models() == {"m": ServedModel("m", 4096, 0)}
    await register(redis_async, redis_names, "m", 2048)
    await register(redis_async, redis_names, "other", 100)
    assert await registry.models() == {"m": ServedModel("m", 2048, 1), "other": ServedModel("other", 100, 1)}
    with pytest.raises(OpenAIError) as unnamed:
        await registry.resolve(None, 1)
    assert unnamed.value.status == 400
    with pytest.raises(OpenAIError) as unknown:
        await registry.resolve("third", 1)
    assert unknown.value.status == 404
    await registry.close()
