"""Fixtures of the observability tests: a whole platform in this process (see observability_platform)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from observability_platform import InProcessPlatform, running_platform

from gorgon.core.redis.names import RedisNames


@pytest.fixture
async def platform(redis_url: str, redis_names: RedisNames) -> AsyncIterator[InProcessPlatform]:
    async with running_platform(redis_url, redis_names) as running:
        yield running
