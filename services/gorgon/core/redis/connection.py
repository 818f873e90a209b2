"""Redis clients and transports: the asyncio client every process opens (`open_redis`), and the raw transport of
a redis-py connection for the classes that read their replies themselves (`open_transport`).

Two places rely on a private attribute of redis-py's asyncio connection, `_writer` (the StreamWriter of an
established connection), for which redis-py has no public accessor: `open_transport` and `PromptWrites`.
tests/core/redis/test_connection.py pins that behaviour; the `redis` requirement bounds the major version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

import hiredis
from redis.asyncio import Connection, ConnectionPool, SSLConnection, UnixDomainSocketConnection
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError

from gorgon.core.errors import ConfigurationError


def require_redis_url(url: str | None) -> str:
    """The configured Redis URL, or a ConfigurationError saying how to set it."""
    if not url:
        raise ConfigurationError("REDIS_URL is not set: point it at a Redis server (redis://host:6379/0)")
    return url


def pack_command(*args: Any) -> bytes:
    """One command in Redis's wire format, packed in C by hiredis (a bool or None raises TypeError)."""
    packed: bytes = hiredis.pack_command(args)
    return packed


async def open_transport(pool: ConnectionPool) -> tuple[AbstractConnection, asyncio.Transport]:
    """A new connection of `pool`, opened by redis-py (address, TLS, AUTH, protocol handshake), and its
    transport, for a caller that takes the reading over with an `asyncio.Protocol` of its own.

    The caller keeps the connection referenced (redis-py closes the socket of a connection object that is
    garbage-collected) and closes it with `disconnect(nowait=True)`."""
    connection = pool.make_connection()
    await connection.connect()
    writer = connection._writer  # the established transport: redis-py has no public accessor for it
    if writer is None:
        raise RedisConnectionError("the connection did not open")
    return connection, cast(asyncio.Transport, writer.transport)


class WaitingConnectionPool(ConnectionPool):
    """A pool of at most `max_connections` whose callers wait for a free connection instead of failing.

    redis-py's BlockingConnectionPool does the same with a condition variable and a timeout around every
    checkout, which costs about 70 µs of CPU per command; a semaphore costs next to nothing when a slot is free.
    """

    def __init__(self, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self._slots = asyncio.Semaphore(max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        await self._slots.acquire()
        try:
            return await super().get_connection(*args, **kwargs)
        except BaseException:
            self._slots.release()
            raise

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            self._slots.release()


class PromptWrites(AbstractConnection):
    """Mixed into a redis-py asyncio connection class (ahead of it): it packs commands in C and writes them at
    once when the socket's buffer is empty.

    With a socket timeout set (redis-py's default is 5 s), redis-py wraps every write in `asyncio.wait_for`, which
    on Python 3.11 runs it in a task of its own: the command leaves one loop iteration later, and the caller
    resumes one more iteration after that. A write into an empty buffer cannot block, so it needs no timeout;
    only a write behind unsent data takes redis-py's timed path (which waits for the buffer to drain).
    Reads keep their timeout.

    redis-py's asyncio connection packed commands in Python, argument by argument, until it took up hiredis's
    packer (redis-py#4191); for the releases before that, `hiredis.pack_command` (what redis-py's synchronous
    client uses when hiredis is installed) builds the same bytes in C: 14 us instead of 110 for the step script
    of a worker serving seven streams.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):
            args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return [pack_command(*args)]
        except TypeError:  # an argument neither packs (a bool, None): redis-py's own error (DataError)
            return super().pack_command(*args)

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer = self._writer
        if (
            writer is None
            or (check_health and self.health_check_interval)
            or writer.transport.is_closing()
            or writer.transport.get_write_buffer_size() > 0
        ):
            await super().send_packed_command(command, check_health)
            return
        if isinstance(command, str):
            command = command.encode()
        try:
            writer.writelines([command] if isinstance(command, bytes) else command)
        except Exception as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc


class PromptWriteConnection(PromptWrites, Connection):
    """TCP (redis://)."""


class PromptWriteSSLConnection(PromptWrites, SSLConnection):
    """TLS (rediss://)."""


class PromptWriteUnixConnection(PromptWrites, UnixDomainSocketConnection):
    """A Unix socket (unix://)."""


PROMPT_WRITE_CONNECTIONS: dict[type, type] = {
    Connection: PromptWriteConnection,
    SSLConnection: PromptWriteSSLConnection,
    UnixDomainSocketConnection: PromptWriteUnixConnection,
}


def open_redis(url: str | None, max_connections: int = 64) -> AsyncRedis:
    """An asyncio client whose pool makes callers wait for a free connection instead of failing, and whose
    connections write commands without a detour through a task (`PromptWrites`), over the transport the URL's
    scheme names (redis-py's own parsing decides it: an explicit connection class overrides the scheme's)."""
    url = require_redis_url(url)
    transport = parse_url(url).get("connection_class", Connection)
    pool = WaitingConnectionPool.from_url(
        url, max_connections=max_connections, connection_class=PROMPT_WRITE_CONNECTIONS[transport]
    )
    return AsyncRedis(connection_pool=pool)
