"""The API side of one request: register, enqueue, relay the worker's chunks in order, clean up.

register the request with the process's subscriber → its queue receives the chunks workers publish on this
  process's reply channel ({ns}:replies:{api id}, subscribed once at start-up, so nothing can be missed)
refused while Redis is nearly out of memory (→ 503), so the workers can still finish what they hold
enqueue through the batching enqueuer (lua/enqueue.lua: XADD requests:{model} only while the stream is under the
  backlog limit, else 429)
relay chunks: each seq once and in order (a repeat must say what was relayed), fill gaps from the progress
list, and when the channel stays quiet, look for a final result stored under the result key, and notice a
request Redis lost (→ 503 within seconds rather than at the deadline)
while nothing comes, a `Waiting` marker every `keepalive_s` (a streaming reply sends an SSE comment for it)
on exit without a final chunk (client gone, deadline): set the cancel flag
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from gorgon.api.enqueuer import BatchingEnqueuer
from gorgon.api.errors import OpenAIError
from gorgon.core.protocol import Chunk, RequestPayload
from gorgon.core.redis.memory import MemoryGuard
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.requests import (
    LOST_AFTER_S,
    read_progress,
    read_result,
    request_cancel,
    request_is_lost,
)
from gorgon.core.redis.subscriber import TokenSubscriber

log = logging.getLogger(__name__)

QUIET_POLL_S = 1.0
"""With no message for this long, the API checks Redis for chunks or a final result it may have missed."""
DEADLINE_GRACE_S = 0.5
"""The worker reports a deadline itself; the API gives it this long before answering 504 on its own."""


@dataclass(frozen=True, slots=True)
class Waiting:
    """What the relay yields while no chunk comes: once as soon as the request is queued, then after every
    `keepalive_s` without a chunk."""


WAITING = Waiting()


def _stream_interrupted() -> OpenAIError:
    return OpenAIError(
        502,
        "chunks of this stream were lost (the queue's Redis server lost data); retry",
        type_="server_error",
        code="stream_interrupted",
    )


@dataclass
class ChunkOrder:
    """Relays each seq of a stream once, in order; for a whole reply, the first final chunk.

    A chunk whose seq was already relayed is dropped when it says the same (pub/sub and the progress list both
    delivered it, or a new attempt resumed from fewer chunks than the client has and published those again
    exactly); when it says something else the stream forked — Redis lost chunks and the new attempt's text
    differs — and the stream ends with an error rather than with duplicated or missing text. A chunk's attempt
    does not matter here: the workers' publish script fences superseded attempts, and after Redis lost data
    attempt numbers may repeat."""

    stream: bool
    expected_seq: int = 0
    relayed: list[tuple[str, bool]] = field(default_factory=list)
    """(text, final) of each relayed seq."""

    def accept(self, chunk: Chunk) -> bool | None:
        """True: relay it. False: drop it. None: a gap before it (fetch the missing chunks first).
        Raises OpenAIError (502) for a repeat that differs from what was relayed."""
        if not self.stream:
            return chunk.final
        if chunk.seq < self.expected_seq:
            if self.relayed[chunk.seq] != (chunk.text, chunk.final):
                raise _stream_interrupted()
            return False
        if chunk.seq > self.expected_seq:
            return None
        self.relayed.append((chunk.text, chunk.final))
        self.expected_seq += 1
        return True


@dataclass
class LossWatch:
    """Calls a request lost once Redis has accounted for it nowhere (`request_is_lost`) for LOST_AFTER_S in a
    row."""

    since: float | None = None

    def lost(self, unaccounted: bool, now: float) -> bool:
        if not unaccounted:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= LOST_AFTER_S


@dataclass
class _Relayed:
    """One request being relayed: its stream entry and what the relay has seen of it."""

    payload: RequestPayload
    entry_id: str
    order: ChunkOrder
    loss: LossWatch = field(default_factory=LossWatch)


class Gateway:
    """Submits requests to the workers and relays their chunks back.

    `keepalive_s`: while no chunk comes, `events` yields a `Waiting` marker this often (None: only the one
    when the request is queued). `memory_guard`: new requests are refused while it says Redis is nearly full.
    """

    def __init__(
        self,
        redis: AsyncRedis,
        names: RedisNames,
        subscriber: TokenSubscriber,
        max_backlog: int,
        retry_after_s: int,
        *,
        keepalive_s: float | None = None,
        memory_guard: MemoryGuard | None = None,
    ) -> None:
        self._redis = redis
        self._names = names
        self._subscriber = subscriber
        self._enqueuer = BatchingEnqueuer(redis, names, max_backlog)
        self._retry_after_s = retry_after_s
        self._keepalive_s = keepalive_s
        self._memory_guard = memory_guard
        self._cleanups: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self._enqueuer.close()
        if self._memory_guard is not None:
            await self._memory_guard.close()

    @property
    def reply_channel(self) -> str:
        """The channel workers publish this process's chunks on (`RequestPayload.reply_to`)."""
        return self._subscriber.channel

    async def generate(self, payload: RequestPayload) -> AsyncGenerator[Chunk, None]:
        """The request's chunks in order, ending with the final one (raises OpenAIError for a worker error)."""
        async with contextlib.aclosing(self.events(payload)) as events:
            async for event in events:
                if isinstance(event, Chunk):
                    yield event

    async def events(self, payload: RequestPayload) -> AsyncGenerator[Chunk | Waiting, None]:
        """`generate`'s chunks with `Waiting` markers between them: the first as soon as the request is queued
        (a refusal raises before it), then one after every `keepalive_s` without a chunk."""
        queue = self._subscriber.register(payload.request_id)
        finished = False
        try:
            entry_id = await self._enqueue(payload)
            yield WAITING
            # closed here: left to the garbage collector, the relay's finaliser would schedule a task per request
            async with contextlib.aclosing(self._relay(queue, payload, entry_id)) as relay:
                async for event in relay:
                    if isinstance(event, Chunk):
                        finished = event.final
                        if event.error is not None:
                            raise OpenAIError.from_wire(event.error)
                    yield event
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

    async def _enqueue(self, payload: RequestPayload) -> str:
        if self._memory_guard is not None and await self._memory_guard.over_limit():
            raise OpenAIError(
                503,
                f"the queue's memory is nearly full; retry after {self._retry_after_s} s",
                type_="server_error",
                code="queue_memory_full",
                headers={"Retry-After": str(self._retry_after_s)},
            )
        entry_id = await self._enqueuer.enqueue(payload)
        if entry_id is None:
            raise OpenAIError(
                429,
                f"the queue for {payload.model} is full; retry after {self._retry_after_s} s",
                type_="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self._retry_after_s)},
            )
        return entry_id

    async def _relay(
        self, queue: asyncio.Queue[Chunk], payload: RequestPayload, entry_id: str
    ) -> AsyncGenerator[Chunk | Waiting, None]:
        relayed = _Relayed(payload, entry_id, ChunkOrder(stream=payload.stream))
        last_event = time.monotonic()
        while True:
            remaining = payload.deadline + DEADLINE_GRACE_S - time.time()
            if remaining <= 0:
                raise OpenAIError(
                    504, "the request timed out before it finished", type_="timeout_error", code="timeout"
                )
            try:
                async with asyncio.timeout(self._wait_s(remaining, last_event)):
                    chunk = await queue.get()
                candidates = [chunk]
            except TimeoutError:
                candidates = await self._missed_unless_unreachable(relayed)
            accepted = await self._in_order(candidates, relayed)
            for chunk in accepted:
                yield chunk
                if chunk.final:
                    return
            now = time.monotonic()
            if accepted:
                last_event = now
            elif self._keepalive_s is not None and now - last_event >= self._keepalive_s:
                yield WAITING
                last_event = now

    def _wait_s(self, remaining_s: float, last_event: float) -> float:
        """How long to wait for the next message: until the deadline, the next quiet poll or keep-alive."""
        wait = min(remaining_s, QUIET_POLL_S)
        if self._keepalive_s is not None:
            wait = min(wait, last_event + self._keepalive_s - time.monotonic())
        return max(0.0, wait)

    async def _in_order(self, candidates: list[Chunk], relayed: _Relayed) -> list[Chunk]:
        order = relayed.order
        accepted: list[Chunk] = []
        for chunk in candidates:
            verdict = order.accept(chunk)
            if verdict is None:
                found = await self._missed(relayed.payload, order)
                accepted += [missed for missed in found if order.accept(missed)]
                verdict = order.accept(chunk)
            if verdict is None:
                raise _stream_interrupted()
            if verdict:
                accepted.append(chunk)
        return accepted

    async def _missed_unless_unreachable(self, relayed: _Relayed) -> list[Chunk]:
        """`_missed`, after which a request Redis accounts for nowhere any more fails (503); or nothing while
        Redis is unreachable: the workers keep their batch through a Redis outage and publish again once it is
        back, so a quiet stream waits (until its deadline) rather than failing."""
        payload = relayed.payload
        try:
            missed = await self._missed(payload, relayed.order)
            unaccounted = not missed and await request_is_lost(
                self._redis, self._names, payload.model, relayed.entry_id, payload.request_id
            )
        except RedisError as exc:
            log.warning("request %s: Redis unreachable while waiting for chunks: %s", payload.request_id, exc)
            return []
        if relayed.loss.lost(unaccounted, time.monotonic()):
            log.warning("request %s: Redis lost its queue entry; failing it", payload.request_id)
            raise OpenAIError(
                503,
                "the queue lost this request (its Redis server lost data); retry",
                type_="server_error",
                code="request_lost",
                headers={"Retry-After": str(self._retry_after_s)},
            )
        return missed

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
