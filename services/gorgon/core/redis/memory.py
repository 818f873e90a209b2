"""How full Redis's memory is: the API refuses new requests past a fraction of `maxmemory`, before Redis itself
refuses writes, so that the workers can still finish the requests they hold."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

MEMORY_CHECK_S = 1.0
"""How long a reading of Redis's memory is used before it is read again."""


async def memory_fill(redis: AsyncRedis) -> float | None:
    """The memory Redis counts against `maxmemory`, as a fraction of it; None when Redis has no limit.

    Redis leaves replication and AOF buffers out of that count (`mem_not_counted_for_evict`)."""
    info = await redis.info("memory")
    limit = int(info.get("maxmemory", 0))
    if limit <= 0:
        return None
    used = int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))
    return used / limit


class MemoryGuard:
    """Tells whether Redis is past `limit_fraction` of its `maxmemory`, from a reading at most `check_s` old
    (the callers that find it older wait for one new reading together)."""

    def __init__(self, redis: AsyncRedis, limit_fraction: float, check_s: float = MEMORY_CHECK_S) -> None:
        self._redis = redis
        self._limit_fraction = limit_fraction
        self._check_s = check_s
        self._fill: float | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Future[None] | None = None

    async def over_limit(self) -> bool:
        """Raises RedisError when Redis cannot be read."""
        if time.monotonic() - self._read_at > self._check_s:
            await self._new_reading()
        return self._fill is not None and self._fill >= self._limit_fraction

    @property
    def fill(self) -> float | None:
        """The last reading (None: no limit, or not read yet)."""
        return self._fill

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._reading

    async def _new_reading(self) -> None:
        """One read of Redis shared by every caller waiting for it (a caller that is cancelled leaves it to the
        others)."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
            self._reading.add_done_callback(self._read_done)
        await asyncio.shield(self._reading)

    async def _read(self) -> None:
        self._fill = await memory_fill(self._redis)
        self._read_at = time.monotonic()

    def _read_done(self, reading: asyncio.Future[None]) -> None:
        self._reading = None
        if not reading.cancelled() and reading.exception() is not None:
            log.warning("could not read Redis's memory use: %s", reading.exception())
