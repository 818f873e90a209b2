from __future__ import annotations

import hashlib
from importlib import resources

import pytest
import redis.asyncio as aioredis

from gorgon.core.redis.command_connection import CommandConnection
from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.core.redis.scripts import LuaScript, lua_script


def test_every_lua_file_ships_with_the_package() -> None:
    folder = resources.files("gorgon.core.redis").joinpath("lua")
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".lua"))
    assert names == [
        "claim.lua",
        "enqueue.lua",
        "prune_index.lua",
        "publish.lua",
        "publish_chunks.lua",
        "register.lua",
        "step.lua",
    ]


def test_a_script_joins_its_files_and_names_the_consumer_group() -> None:
    script = lua_script("publish_chunks.lua", "step.lua")
    assert script.source.index("local function publish_chunks") < script.source.index("publish_chunks(1, 7")
    assert f"'{CONSUMER_GROUP}'" in script.source
    assert "$" not in script.source
    assert script.sha == hashlib.sha1(script.source.encode()).hexdigest()


@pytest.mark.parametrize("through_commands", [False, True])
async def test_run_many_loads_a_script_redis_forgot_and_keeps_the_calls_in_order(
    redis_async: aioredis.Redis, redis_names: RedisNames, through_commands: bool
) -> None:
    script = LuaScript(f"return ARGV[1] .. ' from {redis_names.namespace}'")  # never loaded: NOSCRIPT first
    commands = CommandConnection(redis_async.connection_pool)
    replies = await script.run_many(commands if through_commands else redis_async, [([], ["a"]), ([], ["b"])])
    await commands.close()
    assert replies == [f"{word} from {redis_names.namespace}".encode() for word in ("a", "b")]
