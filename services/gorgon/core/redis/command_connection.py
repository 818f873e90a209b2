"""`CommandConnection`: one Redis connection for the hot path's commands, pipelined, with replies read straight
from the event loop's read callback."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gorgon.core.redis.connection import open_transport, pack_command

_NOT_ENOUGH_DATA = object()
"""What `hiredis.Reader.gets()` returns while no whole reply is buffered (False is a reply of its own in RESP3)."""


def _reply_error(error: hiredis.ReplyError) -> ResponseError:
    message = str(error)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _CommandProtocol(asyncio.Protocol):
    """The reading side of a `CommandConnection`: replies come in the order the commands went out, each
    completes the oldest waiting future (a caller that gave up still has its reply read, in order)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.closed = False
        self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH_DATA)
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()

    def send(self, packed: bytes, replies: int = 1) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._waiting.extend(futures)
        self.transport.write(packed)
        return futures

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not _NOT_ENOUGH_DATA:
            future = self._waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_reply_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(f"Connection closed by server. ({exc})"))


class CommandConnection:
    """One Redis connection for the hot path's commands, without redis-py's per-command machinery (pool
    checkout, retry wrapper, observability hooks, a timeout context per read, a task per timed write): a
    command is packed by hiredis and written at once, and its reply completes its future straight from the
    event loop's read callback. Concurrent callers share the connection (their commands are pipelined, the
    replies matched in order), so a blocking command must only be sent by a caller that owns it alone.

    redis-py opens the connection (address, TLS, AUTH, protocol handshake) and the class takes over its
    transport; a lost connection fails the waiting commands with redis-py's ConnectionError and is opened again
    by the next command. Errors are redis-py's (ResponseError, NoScriptError; TimeoutError past the pool's
    socket timeout, which also closes the connection: replies would no longer match)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._timeout: float | None = None
        self._connection: AbstractConnection | None = None
        self._protocol: _CommandProtocol | None = None
        self._opening: asyncio.Lock | None = None

    async def execute(self, *args: Any, block_s: float = 0.0) -> Any:
        """One command's reply (`block_s`: how long a blocking command may wait in Redis, on top of the
        timeout)."""
        (reply,) = await self.execute_many([args], block_s=block_s)
        return reply

    async def execute_many(
        self, commands: Sequence[Sequence[Any]], *, block_s: float = 0.0, raise_on_error: bool = True
    ) -> list[Any]:
        """Several commands in one write; their replies in order (errors as exceptions in the list, or raised)."""
        protocol = self._protocol
        if protocol is None or protocol.closed or protocol.transport.is_closing():
            protocol = await self._open()
        futures = protocol.send(b"".join(pack_command(*args) for args in commands), len(commands))
        try:
            if self._timeout is None:
                replies = await asyncio.gather(*futures, return_exceptions=True)
            else:
                async with asyncio.timeout(self._timeout + block_s):
                    replies = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError:
            protocol.closed = True  # at once: the next command must not be sent on the closing transport
            protocol.transport.close()
            raise RedisTimeoutError("Timeout reading from Redis") from None
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        return replies

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, source: str) -> Any:
        return await self.execute("SCRIPT", "LOAD", source)

    async def close(self) -> None:
        connection, self._connection, self._protocol = self._connection, None, None
        if connection is not None:
            await connection.disconnect(nowait=True)

    async def _open(self) -> _CommandProtocol:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if (
                self._protocol is not None
                and not self._protocol.closed
                and not self._protocol.transport.is_closing()
            ):
                return self._protocol
            connection, transport = await open_transport(self._pool)
            self._timeout = connection.socket_timeout  # redis-py's own default (5 s) unless the URL sets one
            protocol = _CommandProtocol(transport)
            transport.set_protocol(protocol)
            self._connection, self._protocol = connection, protocol
            return protocol
