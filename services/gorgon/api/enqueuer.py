"""Enqueueing with the round trips shared: the requests of one API process that reach the queue in the same
event-loop iteration go to Redis in one pipeline (one socket write and one read for all of them, instead of one
each). A lone request is sent as soon as the loop comes round, so nothing waits for company. The enqueuer's
commands go over a `CommandConnection` of its own (no redis-py machinery per command)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis as AsyncRedis

from gorgon.core.protocol import RequestPayload
from gorgon.core.redis.command_connection import CommandConnection
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.queue import enqueue_many


class BatchingEnqueuer:
    """`gorgon.core.redis.queue.enqueue`, with the calls made in one loop iteration sent together."""

    def __init__(self, redis: AsyncRedis, names: RedisNames, max_backlog: int) -> None:
        self._redis = CommandConnection(redis.connection_pool)
        self._names = names
        self._max_backlog = max_backlog
        self._waiting: list[tuple[RequestPayload, asyncio.Future[str | None]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self._redis.close()

    async def enqueue(self, payload: RequestPayload) -> str | None:
        """The entry id, or None when the model's backlog is full (raises RedisError if Redis fails)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        self._waiting.append((payload, future))
        if len(self._waiting) == 1:
            task = loop.create_task(self._send_waiting())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return await future

    async def _send_waiting(self) -> None:
        """Runs once the loop comes round (a new task's first step): by then every request of the iteration
        that created it is waiting. Each payload is enqueued even if its caller was cancelled meanwhile (the
        caller's clean-up sets the cancel flag, as for a request enqueued just before its client left)."""
        batch, self._waiting = self._waiting, []
        try:
            entry_ids = await enqueue_many(
                self._redis, self._names, [payload for payload, _ in batch], self._max_backlog
            )
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # handed to every waiting caller, whatever it is
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), entry_id in zip(batch, entry_ids, strict=True):
            if not future.done():
                future.set_result(entry_id)
