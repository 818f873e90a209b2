from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError

from gorgon.core.errors import ConfigurationError
from gorgon.core.redis.connection import (
    PromptWriteConnection,
    PromptWrites,
    open_redis,
    open_transport,
    require_redis_url,
)


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", aioredis.Connection),
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=required", aioredis.SSLConnection),
        ("unix:///run/redis.sock?db=0", aioredis.UnixDomainSocketConnection),
    ],
)
def test_open_redis_keeps_the_transport_the_url_names(url: str, transport: type) -> None:
    """redis-py lets an explicit connection class override the scheme's: a rediss:// URL must still get TLS."""
    connection_class = open_redis(url).connection_pool.connection_class
    assert issubclass(connection_class, transport)
    assert issubclass(connection_class, PromptWrites)


def test_a_missing_redis_url_says_how_to_set_it() -> None:
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        require_redis_url("")


async def test_redis_py_keeps_an_established_connections_stream_writer_in_writer(redis_url: str) -> None:
    """`open_transport` and `PromptWrites` rely on this private attribute of redis-py's asyncio connection:
    None until connected, then the StreamWriter over the connection's transport, None again once disconnected."""
    connection = aioredis.ConnectionPool.from_url(redis_url).make_connection()
    assert connection._writer is None
    await connection.connect()
    assert isinstance(connection._writer, asyncio.StreamWriter)
    assert isinstance(connection._writer.transport, asyncio.Transport)
    await connection.disconnect()
    assert connection._writer is None


async def test_open_transport_hands_over_an_established_connections_transport(redis_url: str) -> None:
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Replies(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            replies.put_nowait(data)

    connection, transport = await open_transport(aioredis.ConnectionPool.from_url(redis_url))
    transport.set_protocol(Replies())
    transport.write(b"*1\r\n$4\r\nPING\r\n")
    assert await asyncio.wait_for(replies.get(), 5) == b"+PONG\r\n"
    await connection.disconnect(nowait=True)


@pytest.mark.parametrize(
    "command",
    [
        ("SET", "k", "v"),
        ("CLIENT LIST",),
        (b"CONFIG GET", "x"),
        ("EVALSHA", "ab", 2, "k", 1.5, b"\x00\xff", "é"),
    ],
)
def test_prompt_writes_pack_commands_as_redis_py_does(command: tuple[str | bytes | int | float, ...]) -> None:
    assert b"".join(PromptWriteConnection().pack_command(*command)) == b"".join(
        aioredis.Connection().pack_command(*command)
    )


def test_prompt_writes_refuse_what_redis_py_refuses() -> None:
    with pytest.raises(DataError):
        PromptWriteConnection().pack_command("SET", "k", True)


async def test_prompt_writes_send_a_command_into_an_empty_buffer_without_yielding(redis_url: str) -> None:
    client = open_redis(redis_url)
    connection = client.connection_pool.make_connection()
    await connection.connect()
    sending = connection.send_packed_command(connection.pack_command("PING"))
    with pytest.raises(StopIteration):
        sending.send(None)  # done at the first step: the command left without a detour through the event loop
    assert await connection.read_response() in (b"PONG", "PONG")
    await connection.disconnect()
    await client.aclose()


async def test_an_open_redis_client_runs_commands_and_pipelines(redis_url: str, redis_namespace: str) -> None:
    client = open_redis(redis_url, max_connections=2)
    key = f"{redis_namespace}:value"
    large = b"x" * 1_000_000  # more than a socket buffer takes at once: the write waits for it to drain
    await asyncio.gather(*(client.set(f"{key}:{index}", large) for index in range(4)))
    async with client.pipeline(transaction=False) as pipe:
        for index in range(4):
            pipe.strlen(f"{key}:{index}")
        assert await pipe.execute() == [len(large)] * 4
    await client.delete(*(f"{key}:{index}" for index in range(4)))
    await client.aclose()
