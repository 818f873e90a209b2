"""Crash recovery with real processes: a worker SIGKILLed mid-generation, a second worker completes the request,
and the streaming client receives one coherent answer (no duplicated or interleaved tokens)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.engine.echo import continuation
from gorgon.local.processes import LocalServices
from gorgon_testing import services_in_fresh_namespace

pytestmark = pytest.mark.processes

LEASE = {"lease_s": "1.0", "heartbeat_interval_s": "0.25", "registration_ttl_s": "3", "read_block_ms": "20"}


@pytest.fixture
def services(redis_url: str) -> Iterator[LocalServices]:
    with services_in_fresh_namespace(redis_url) as running:
        yield running


def holder_of_only_entry(client: redis.Redis, names: RedisNames) -> str | None:
    pending = client.xpending_range(names.request_stream("echo"), CONSUMER_GROUP, min="-", max="+", count=10)
    return pending[0]["consumer"].decode() if pending else None


def test_worker_killed_mid_generation_is_replaced_without_the_client_noticing(
    services: LocalServices,
) -> None:
    workers = {name: services.start_worker("echo", 0.03, worker_id=name, **LEASE) for name in ("w-a", "w-b")}
    api = services.start_api()
    client = redis.Redis.from_url(services.redis_url)
    names = RedisNames(services.namespace)
    deadline = time.monotonic() + 30
    while len(list(client.scan_iter(match=names.worker_pattern("echo")))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)

    body = {"prompt": "abc", "max_tokens": 90, "stream": True, "use_speculative": False}
    texts: list[str] = []
    killed = None
    with httpx.stream("POST", f"{api}/v1/completions", json=body, timeout=30) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            texts.append(json.loads(line.removeprefix("data: "))["choices"][0]["text"])
            if len(texts) == 15 and killed is None:
                killed = holder_of_only_entry(client, names)
                assert killed in workers
                workers[killed].send_signal(signal.SIGKILL)
    assert killed is not None
    assert "".join(texts) == continuation("abc", 90)
    survivor = next(name for name in workers if name != killed)
    deadline = time.monotonic() + 3
    while holder_of_only_entry(client, names) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert holder_of_only_entry(client, names) is None, "the survivor acknowledged the finished request"
    assert client.xlen(names.request_stream("echo")) == 0
    assert workers[survivor].poll() is None
    client.close()
