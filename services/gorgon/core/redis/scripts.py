"""Server-side Lua scripts: their sources live in `lua/`, one file per script (and one for the function two of
them share), read once when the module that runs them is imported."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from string import Template
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import NoScriptError

from gorgon.core.redis.command_connection import CommandConnection
from gorgon.core.redis.names import CONSUMER_GROUP


class LuaScript:
    """A server-side script called by its SHA (loaded on first use and again if the server forgot it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(
        self, redis: AsyncRedis | CommandConnection, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)

    async def run_many(
        self, redis: AsyncRedis | CommandConnection, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Several calls in one round trip (a non-transactional pipeline)."""
        if isinstance(redis, CommandConnection):
            return await self._run_many_commands(redis, calls)
        for _ in range(2):
            async with redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(self.sha, len(keys), *keys, *args)
                try:
                    return await pipe.execute()
                except NoScriptError:
                    await redis.script_load(self.source)
        raise NoScriptError(f"script {self.sha} could not be loaded")

    async def _run_many_commands(
        self, redis: CommandConnection, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        commands = [("EVALSHA", self.sha, len(keys), *keys, *args) for keys, args in calls]
        replies = await redis.execute_many(commands, raise_on_error=False)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            await redis.script_load(self.source)
            replies = await redis.execute_many(commands, raise_on_error=False)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies


def lua_script(*files: str) -> LuaScript:
    """The script made of `files` of `lua/`, in order, with `${consumer_group}` replaced by the consumer group's
    name (the one source of that name is `names.CONSUMER_GROUP`)."""
    folder = resources.files("gorgon.core.redis").joinpath("lua")
    source = "".join(folder.joinpath(name).read_text(encoding="utf-8") for name in files)
    return LuaScript(Template(source).substitute(consumer_group=CONSUMER_GROUP))
