"""A Redis server with a small memory limit, filled on demand: for the tests of what happens near and at that
limit (tests/ is on sys.path through the root conftest)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis
from redis.exceptions import OutOfMemoryError

from gorgon.local.redis_server import start_private_redis

JUNK_PREFIX = "junk:"
JUNK_BLOCK = b"x" * 32_768


@contextlib.contextmanager
def redis_with_memory_limit(headroom_bytes: int) -> Iterator[str]:
    """A private Redis whose maxmemory is its memory in use at start plus `headroom_bytes`, with the chart's
    eviction policy (none); yields its URL."""
    server = start_private_redis()
    client = redis.Redis.from_url(server.url)
    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used + headroom_bytes)
        yield server.url
    finally:
        client.close()
        server.stop()


def memory_fill(client: redis.Redis) -> float:
    """What Redis counts against its maxmemory, as a fraction of it."""
    info = client.info("memory")
    return (int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))) / int(info["maxmemory"])


def fill_to(client: redis.Redis, fraction: float) -> None:
    """Junk keys until Redis's memory is at least `fraction` (below 1) of its maxmemory."""
    index = len(list(client.scan_iter(match=f"{JUNK_PREFIX}*")))
    while memory_fill(client) < fraction:
        client.set(f"{JUNK_PREFIX}{index}", JUNK_BLOCK)
        index += 1


def push_past_limit(client: redis.Redis, fraction: float = 1.25) -> None:
    """Put Redis's memory at `fraction` of its maxmemory, past it: filled close to it, then the limit lowered
    (right at the limit, memory hovers across it as client buffers come and go)."""
    fill_to(client, 0.95)
    info = client.info("memory")
    used = int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))
    client.config_set("maxmemory", int(used / fraction))


def clear_junk(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=f"{JUNK_PREFIX}*"))
    if keys:
        client.delete(*keys)


def refuses_writes(client: redis.Redis) -> bool:
    """Whether Redis refuses a write that grows memory now (its own OOM answer)."""
    try:
        client.set(f"{JUNK_PREFIX}probe", JUNK_BLOCK)
    except OutOfMemoryError:
        return True
    return False
