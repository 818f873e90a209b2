"""An API process killed or restarted while it relays streams, and a client that stops reading: the streams of
other API processes and clients are untouched, a killed API's clients see the connection end (no hang), its
orphaned requests still leave the queue, a SIGTERMed API finishes its streams, and a client that never reads
stalls neither the worker nor anyone else."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from reliability_harness import (
    FAST_TAKEOVER,
    distinct_prompt,
    platform_on,
    problems,
    stream_many,
    wait_for,
    wait_for_workers,
)

from gorgon.core.redis.names import RedisNames
from gorgon.local.processes import LocalServices, api_command, free_port, spawn, wait_until_ready

pytestmark = pytest.mark.processes


STEP_DELAY_S = 0.01
MAX_TOKENS = 150
STREAMS_PER_API = 6


@pytest.fixture(scope="module")
def relay_platform(redis_url: str) -> Iterator[tuple[LocalServices, str]]:
    """Two echo workers and a bystander API process (B), shared by this module's tests."""
    with platform_on(redis_url) as services:
        for _ in range(2):
            services.start_worker("echo", STEP_DELAY_S, **FAST_TAKEOVER)
        api_b = services.start_api()
        wait_for_workers(services.redis_url, services.namespace, 2)
        yield services, api_b


def start_api_on(services: LocalServices, port: int) -> tuple[str, subprocess.Popen[bytes]]:
    process = spawn(api_command(port), services.env)
    services.processes.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, 60, alive=process)
    return url, process


def queue_length(services: LocalServices) -> int:
    client = redis.Redis.from_url(services.redis_url)
    try:
        return int(client.xlen(RedisNames(services.namespace).request_stream("echo")))
    finally:
        client.close()


async def streams_while(api_a: str, api_b: str, disrupt_a: Callable[[], object]) -> tuple[list, list]:
    on_a = asyncio.create_task(stream_many(api_a, STREAMS_PER_API, MAX_TOKENS, 30))
    on_b = asyncio.create_task(stream_many(api_b, STREAMS_PER_API, MAX_TOKENS, 30))
    await asyncio.sleep(0.6)
    await asyncio.to_thread(disrupt_a)
    return await on_a, await on_b


def test_killed_api_cuts_only_its_own_streams_and_comes_back(
    relay_platform: tuple[LocalServices, str],
) -> None:
    services, api_b = relay_platform
    port = free_port()
    api_a, process_a = start_api_on(services, port)

    def kill_a() -> None:
        process_a.send_signal(signal.SIGKILL)
        process_a.wait()

    on_a, on_b = asyncio.run(streams_while(api_a, api_b, kill_a))

    assert problems(on_a) == [] and problems(on_b) == []
    assert all(o.error and o.error.startswith("transport") for o in on_a), [o.error for o in on_a]
    assert all(o.elapsed_s < 10 for o in on_a), "a client of the killed API waited for its deadline"
    assert all(o.completed for o in on_b), [o.error for o in on_b]
    assert wait_for(lambda: queue_length(services) == 0, 15), "the killed API's requests stayed queued"

    api_a, _ = start_api_on(services, port)
    again = asyncio.run(stream_many(api_a, 3, 20, 30))
    assert problems(again) == [] and all(o.completed for o in again)


def test_sigtermed_api_finishes_the_streams_it_relays(relay_platform: tuple[LocalServices, str]) -> None:
    services, api_b = relay_platform
    api_a, process_a = start_api_on(services, free_port())

    on_a, on_b = asyncio.run(streams_while(api_a, api_b, lambda: process_a.send_signal(signal.SIGTERM)))

    assert problems(on_a + on_b) == []
    assert all(o.completed for o in on_a + on_b), [o.error for o in on_a + on_b if not o.completed]
    assert process_a.wait(timeout=15) in (0, -signal.SIGTERM), "the API did not stop after its streams"


def open_unread_stream(api: str, max_tokens: int) -> socket.socket:
    """A streaming request from a client with a tiny receive buffer that never reads the answer."""
    host, port = api.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = json.dumps(
        {"prompt": distinct_prompt(99), "max_tokens": max_tokens, "stream": True, "use_speculative": False}
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def test_a_client_that_stops_reading_stalls_neither_the_worker_nor_other_clients(
    relay_platform: tuple[LocalServices, str],
) -> None:
    services, api = relay_platform
    slow = open_unread_stream(api, max_tokens=800)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        others = asyncio.run(stream_many(api, 8, 50, 30))
        others_s = time.monotonic() - started
        assert problems(others) == [] and all(o.completed for o in others)
        assert others_s < 20, f"other clients took {others_s:.1f} s"
        assert wait_for(lambda: queue_length(services) == 0, 60), "the worker never finished the slow stream"
    finally:
        slow.close()
