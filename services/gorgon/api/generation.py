"""The API side of one request: subscribe, enqueue, relay the worker's chunks in order, clean up.

queue = SUBSCRIBE tokens:{id} (confirmed)   → nothing the worker publishes can be missed
XADD requests:{model} (refused past the backlog limit → 429)
relay chunks: drop superseded attempts and duplicates, fill gaps from the progress list, and when the
channel stays quiet, look for a final result stored under the result key
on exit without a final chunk (client gone, deadline): set the cancel flag
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from gorgon.api.enqueuer import BatchingEnqueuer
from gorgon.api.errors import OpenAIError
from gorgon.core.protocol import Chunk, RequestPayload
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.requests import read_progress, read_result, request_cancel
from gorgon.core.redis.subscriber import TokenSubscriber

log = logging.getLogger(__name__)

QUIET_POLL_S = 1.0
"""With no message for this long, the API checks Redis for chunks or a final result it may have missed."""
DEADLINE_GRACE_S = 0.5
"""The worker reports a deadline itself; the API gives it this long before answering 504 on its own."""


@dataclass
class ChunkOrder:
    """Accepts chunks in seq order from the newest attempt; everything else is a duplicate or superseded."""

    stream: bool
    expected_seq: int = 0
    attempt: int = 0

    def accept(self, chunk: Chunk) -> bool | None:
        """True: relay it. False: drop it. None: a gap before it (fetch the missing chunks first)."""
        if chunk.attempt < self.attempt:
            return False
        self.attempt = chunk.attempt
        if not self.stream:
            return chunk.final
        if chunk.seq < self.expected_seq:
            return False
        if chunk.seq > self.expected_seq:
            return None
        self.expected_seq += 1
        return True


class Gateway:
    """Submits requests to the workers and relays their chunks back."""

    def __init__(
        self,
        redis: AsyncRedis,
        names: RedisNames,
        subscriber: TokenSubscriber,
        max_backlog: int,
        retry_after_s: int,
    ) -> None:
        self._redis = redis
        self._names = names
        self._subscriber = subscriber
        self._enqueuer = BatchingEnqueuer(redis, names, max_backlog)
        self._retry_after_s = retry_after_s
        self._cleanups: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self._enqueuer.close()

    @property
    def reply_channel(self) -> str:
        """The channel workers publish this process's chunks on (`RequestPayload.reply_to`)."""
        return self._subscriber.channel

    async def generate(self, payload: RequestPayload) -> AsyncGenerator[Chunk, None]:
        """The request's chunks in order, ending with the final one (raises OpenAIError for a worker error)."""
        queue = self._subscriber.register(payload.request_id)
        finished = False
        try:
            await self._enqueue(payload)
            # closed here: left to the garbage collector, the relay's finaliser would schedule a task per request
            async with contextlib.aclosing(self._relay(queue, payload)) as relay:
                async for chunk in relay:
                    finished = chunk.final
                    if chunk.error is not None:
                        raise OpenAIError.from_wire(chunk.error)
                    yield chunk
        except RedisError as exc:
            log.warning("Redis failed during request %s: %s", payload.request_id, exc)
            raise OpenAIError(
                503,
                "the queue became unavailable; retry shortly",
                type_="server_error",
                code="redis_unavailable",
            ) from exc
        finally:
            self._clean_up_later(payload, cancel=not finished)

    async def _enqueue(self, payload: RequestPayload) -> None:
        entry_id = await self._enqueuer.enqueue(payload)
        if entry_id is None:
            raise OpenAIError(
                429,
                f"the queue for {payload.model} is full; retry after {self._retry_after_s} s",
                type_="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self._retry_after_s)},
            )

    async def _relay(
        self, queue: asyncio.Queue[Chunk], payload: RequestPayload
    ) -> AsyncGenerator[Chunk, None]:
        order = ChunkOrder(stream=payload.stream)
        while True:
            remaining = payload.deadline + DEADLINE_GRACE_S - time.time()
            if remaining <= 0:
                raise OpenAIError(
                    504, "the request timed out before it finished", type_="timeout_error", code="timeout"
                )
            try:
                async with asyncio.timeout(min(remaining, QUIET_POLL_S)):
                    chunk = await queue.get()
                candidates = [chunk]
            except TimeoutError:
                candidates = await self._missed_unless_unreachable(payload, order)
            for accepted in await self._in_order(candidates, payload, order):
                yield accepted
                if accepted.final:
                    return

    async def _in_order(
        self, candidates: list[Chunk], payload: RequestPayload, order: ChunkOrder
    ) -> list[Chunk]:
        accepted: list[Chunk] = []
        for chunk in candidates:
            verdict = order.accept(chunk)
            if verdict is None:
                accepted += [missed for missed in await self._missed(payload, order) if order.accept(missed)]
                verdict = order.accept(chunk)
            if verdict is None:
                raise OpenAIError(
                    502,
                    "chunks of this stream were lost (the queue's Redis server restarted?); retry",
                    type_="server_error",
                    code="stream_interrupted",
                )
            if verdict:
                accepted.append(chunk)
        return accepted

    async def _missed_unless_unreachable(self, payload: RequestPayload, order: ChunkOrder) -> list[Chunk]:
        """`_missed`, or nothing while Redis is unreachable: the workers keep their batch through a Redis outage
        and publish again once it is back, so a quiet stream waits (until its deadline) rather than failing."""
        try:
            return await self._missed(payload, order)
        except RedisError as exc:
            log.warning("request %s: Redis unreachable while waiting for chunks: %s", payload.request_id, exc)
            return []

    async def _missed(self, payload: RequestPayload, order: ChunkOrder) -> list[Chunk]:
        """What Redis holds that pub/sub may not have delivered: progress chunks, or the stored final result."""
        if payload.stream:
            return await read_progress(self._redis, self._names, payload.request_id, order.expected_seq)
        result = await read_result(self._redis, self._names, payload.request_id)
        return [result] if result is not None else []

    def _clean_up_later(self, payload: RequestPayload, *, cancel: bool) -> None:
        """Stop routing the request's chunks; if it did not finish, set its cancel flag in a task of its own
        (the caller may be being cancelled itself)."""
        self._subscriber.unregister(payload.request_id)
        if not cancel:
            return
        task = asyncio.get_running_loop().create_task(self._cancel(payload))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _cancel(self, payload: RequestPayload) -> None:
        ttl = int(max(0.0, payload.deadline - time.time())) + 60
        try:
            await request_cancel(self._redis, self._names, payload.request_id, ttl)
        except RedisError as exc:
            log.warning("could not cancel request %s: %s", payload.request_id, exc)
            return
        log.info("request %s cancelled (client gone or deadline passed)", payload.request_id)
