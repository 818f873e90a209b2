from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gorgon.core.redis.command_connection import CommandConnection
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.scripts import LuaScript


async def test_command_connection_pipelines_concurrent_commands_and_keeps_their_order(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    commands = CommandConnection(redis_async.connection_pool)
    key = f"{redis_names.namespace}:counter"
    replies = await asyncio.gather(*(commands.execute("INCR", key) for _ in range(50)))
    assert replies == list(range(1, 51))
    with pytest.raises(ResponseError):
        await commands.execute("LPUSH", key, "x")  # wrong type: an error reply, the connection stays usable
    assert await commands.execute("GET", key) == b"50"
    await commands.close()


async def test_command_connection_loads_a_script_redis_forgot_and_reconnects_after_a_kill(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    commands = CommandConnection(redis_async.connection_pool)
    script = LuaScript(f"return 'hello from {redis_names.namespace}'")  # never loaded: NOSCRIPT first
    assert await script.run(commands, [], []) == f"hello from {redis_names.namespace}".encode()
    own = await commands.execute("CLIENT", "ID")
    waiting = asyncio.ensure_future(
        commands.execute("BLPOP", f"{redis_names.namespace}:nothing", 5, block_s=5)
    )
    await asyncio.sleep(0.2)
    await redis_async.client_kill_filter(_id=str(own))
    with pytest.raises(RedisConnectionError):
        await waiting
    assert await commands.execute("PING") in (b"PONG", "PONG")
    assert await commands.execute("CLIENT", "ID") != own
    await commands.close()


async def test_command_connection_times_out_like_redis_py_and_opens_again(
    redis_url: str, redis_names: RedisNames
) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.3)
    commands = CommandConnection(client.connection_pool)
    with pytest.raises(RedisTimeoutError):
        await commands.execute("BLPOP", f"{redis_names.namespace}:nothing", 2)  # blocks past the timeout
    assert await commands.execute("PING") in (b"PONG", "PONG")
    await commands.close()
    await client.aclose()
