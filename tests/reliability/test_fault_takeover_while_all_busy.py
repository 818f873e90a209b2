"""A worker SIGKILLed while every surviving worker is busy: its half-finished requests are taken over on the
lease's schedule anyway, and they take the survivor's next free rows before requests that arrived after them.

Two echo workers of two rows each hold two streams apiece; one is killed, and two newcomers are queued at once.
The survivor claims the orphans while its own rows are still busy; when those finish, the orphans resume first and
the newcomers follow. Every client receives exactly its text, and the survivor is the process that started."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from dataclasses import dataclass, field

import httpx
import pytest
import redis
from reliability_harness import FAST_TAKEOVER, TimedStream, platform_on, timed_stream, wait_for_workers

from gorgon.core.protocol import RequestPayload
from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.engine.echo import continuation
from gorgon.local.processes import LocalServices

pytestmark = pytest.mark.processes

STEP_DELAY_S = 0.03
BUSY_TOKENS = 120
NEWCOMER_TOKENS = 10
WORKER_SETTINGS = {**FAST_TAKEOVER, "max_batch_size": "2"}


def holders(services: LocalServices) -> dict[str, str]:
    """request id -> the consumer holding its entry."""
    client = redis.Redis.from_url(services.redis_url)
    stream = RedisNames(services.namespace).request_stream("echo")
    try:
        pending = client.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=100)
        held = {}
        for entry in pending:
            ((_, fields),) = client.xrange(stream, min=entry["message_id"], max=entry["message_id"])
            held[RequestPayload.decode(fields[b"p"]).request_id] = entry["consumer"].decode()
        return held
    finally:
        client.close()


@dataclass
class Scenario:
    """Every stream by prompt, with its max_tokens; which were orphaned and which came after the kill."""

    streams: dict[str, TimedStream] = field(default_factory=dict)
    max_tokens: dict[str, int] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)
    newcomers: list[str] = field(default_factory=list)
    killed_at: float = 0.0
    claimed_at: float = 0.0


async def run_scenario(
    services: LocalServices, api: str, workers: dict[str, subprocess.Popen[bytes]]
) -> Scenario:
    scenario = Scenario()
    async with httpx.AsyncClient(timeout=httpx.Timeout(60)) as client:

        def start(prompt: str, max_tokens: int) -> asyncio.Task[TimedStream]:
            scenario.streams[prompt], scenario.max_tokens[prompt] = TimedStream(), max_tokens
            body = {"prompt": prompt, "max_tokens": max_tokens, "use_speculative": False}
            return asyncio.create_task(
                timed_stream(client, f"{api}/v1/completions", body, scenario.streams[prompt])
            )

        tasks = [start(f"busy {index} " + "abcd"[index], BUSY_TOKENS) for index in range(4)]
        async with asyncio.timeout(30):
            while not all(len(stream.arrivals) >= 5 for stream in scenario.streams.values()):
                await asyncio.sleep(0.02)
        held = holders(services)
        assert sorted(held.values()) == ["w-a", "w-a", "w-b", "w-b"], held
        workers["w-a"].send_signal(signal.SIGKILL)
        scenario.killed_at = time.monotonic()
        scenario.orphans = [
            prompt for prompt, stream in scenario.streams.items() if held[str(stream.request_id)] == "w-a"
        ]
        scenario.newcomers = [f"newcomer {index} " + "xy"[index] for index in range(2)]
        tasks += [start(prompt, NEWCOMER_TOKENS) for prompt in scenario.newcomers]
        orphan_ids = [str(scenario.streams[prompt].request_id) for prompt in scenario.orphans]
        scenario.claimed_at = await _when_taken_over(services, orphan_ids)
        await asyncio.gather(*tasks)
    return scenario


async def _when_taken_over(services: LocalServices, request_ids: list[str | None]) -> float:
    async with asyncio.timeout(20):
        while True:
            held = await asyncio.to_thread(holders, services)
            if all(held.get(request_id) == "w-b" for request_id in request_ids):
                return time.monotonic()
            await asyncio.sleep(0.05)


def test_orphans_are_taken_over_while_all_busy_and_go_before_newcomers(redis_url: str) -> None:
    with platform_on(redis_url) as services:
        workers = {
            name: services.start_worker("echo", STEP_DELAY_S, worker_id=name, **WORKER_SETTINGS)
            for name in ("w-a", "w-b")
        }
        api = services.start_api()
        wait_for_workers(services.redis_url, services.namespace, 2)
        scenario = asyncio.run(run_scenario(services, api, workers))
        assert workers["w-b"].poll() is None, "the survivor is the process that started"
    streams = scenario.streams
    for prompt, stream in streams.items():
        assert stream.error is None and stream.finish_reason == "length", (prompt, stream)
        assert stream.text == continuation(prompt, scenario.max_tokens[prompt]), prompt
    survivors_own = [
        prompt for prompt in streams if prompt.startswith("busy") and prompt not in scenario.orphans
    ]
    assert scenario.claimed_at < min(streams[prompt].arrivals[-1] for prompt in survivors_own), (
        "taken over while the survivor's rows were all busy"
    )
    orphans_resumed = max(
        next(arrival for arrival in streams[prompt].arrivals if arrival > scenario.claimed_at)
        for prompt in scenario.orphans
    )
    newcomers_started = min(streams[prompt].arrivals[0] for prompt in scenario.newcomers)
    assert orphans_resumed < newcomers_started, "the orphans took the freed rows before the newcomers"
