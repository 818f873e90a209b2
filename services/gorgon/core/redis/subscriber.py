"""The API side of the replies: one pub/sub subscription per API process, on its own reply channel, routing
each request's chunks to that request's queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

import hiredis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from gorgon.core.protocol import Chunk, ProtocolError, decode_chunks
from gorgon.core.redis.connection import open_transport, pack_command
from gorgon.core.redis.names import RedisNames

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 5.0

RESUBSCRIBE_FIRST_S = 0.1
RESUBSCRIBE_MAX_S = 2.0
"""After losing its connection, the subscriber reconnects with a delay doubling from the first to the max."""


class _ReplyChannelProtocol(asyncio.Protocol):
    """The reading side of the subscribed connection: each message is routed from `data_received`, as soon as
    its bytes arrive (no reader task to wake, no call through redis-py's pub/sub machinery per message)."""

    def __init__(self, route: Callable[[bytes], None], lost: Callable[[Exception | None], None]) -> None:
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = hiredis.Reader()
        self._route = route
        self._lost = lost

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if not isinstance(reply, list) or len(reply) != 3:
                if isinstance(reply, hiredis.ReplyError) and not self.subscribed.done():
                    self.subscribed.set_exception(ResponseError(str(reply)))
                continue
            kind = reply[0]
            if kind == b"message":
                self._route(reply[2])
            elif kind == b"subscribe" and not self.subscribed.done():
                self.subscribed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(RedisConnectionError(f"connection lost while subscribing: {exc}"))
        self._lost(exc)


class TokenSubscriber:
    """Receives the chunks of all requests of one API process on its own reply channel (one subscription,
    confirmed by Redis in `start` before any request is enqueued: pub/sub drops messages nobody hears) and
    routes them to per-request queues by request id.

    redis-py opens the connection (address, TLS, AUTH, protocol handshake); once it is established, the
    subscriber takes over its transport with `_ReplyChannelProtocol`, which routes each message from the event
    loop's read callback. A lost connection is reopened and subscribed again in the background; what was
    published meanwhile is recovered by the waiting requests' quiet poll (`Gateway`)."""

    def __init__(self, redis: AsyncRedis, names: RedisNames, listener_id: str | None = None) -> None:
        self.channel = names.reply_channel(listener_id or uuid.uuid4().hex)
        self._pool = redis.connection_pool
        self._queues: dict[str, asyncio.Queue[Chunk]] = {}
        self._connection: AbstractConnection | None = None
        self._resubscribing: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Subscribe and wait for Redis to confirm; from then on every message is routed."""
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            await self._subscribe()

    async def close(self) -> None:
        self._closing = True
        if self._resubscribing is not None:
            self._resubscribing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resubscribing
        if self._connection is not None:
            await self._connection.disconnect(nowait=True)
            self._connection = None

    def register(self, request_id: str) -> asyncio.Queue[Chunk]:
        """The queue that will receive `request_id`'s chunks."""
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        self._queues[request_id] = queue
        return queue

    def unregister(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    async def _subscribe(self) -> None:
        connection, transport = await open_transport(self._pool)
        try:
            protocol = _ReplyChannelProtocol(self._route, self._connection_lost)
            transport.set_protocol(protocol)
            transport.write(pack_command("SUBSCRIBE", self.channel))
            await protocol.subscribed
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        self._connection = connection

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._closing or self._resubscribing is not None:
            return
        log.warning("token subscriber lost its connection (%s); reconnecting", exc)
        self._resubscribing = asyncio.get_running_loop().create_task(self._resubscribe(), name="resubscribe")

    async def _resubscribe(self) -> None:
        delay = RESUBSCRIBE_FIRST_S
        try:
            while not self._closing:
                await asyncio.sleep(delay)
                try:
                    async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                        await self._subscribe()
                except (RedisError, OSError, TimeoutError) as exc:
                    log.debug("token subscriber still cannot subscribe: %s", exc)
                    delay = min(2 * delay, RESUBSCRIBE_MAX_S)
                    continue
                log.info("token subscriber subscribed again to %s", self.channel)
                return
        finally:
            self._resubscribing = None

    def _route(self, data: bytes) -> None:
        try:
            chunks = decode_chunks(data)
        except ProtocolError as exc:
            log.warning("ignored a message that is not a batch of chunks: %s", exc)
            return
        for chunk in chunks:
            queue = self._queues.get(chunk.request_id)
            if queue is not None:
                queue.put_nowait(chunk)
