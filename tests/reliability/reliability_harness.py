"""Process harness of the fault suite: a private Redis server the test may stop and restart on the same port,
API and worker processes on it (gorgon.local.processes.LocalServices, as the API and worker tests use), and
streaming clients that record exactly what a user receives."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import redis

from gorgon.core.redis.names import RedisNames
from gorgon.engine.echo import CYCLE, continuation
from gorgon.local.processes import LocalServices
from gorgon.local.redis_server import PrivateRedis, start_private_redis
from gorgon_testing import services_in_fresh_namespace

FAST_TAKEOVER = {
    "lease_s": "1.0",
    "heartbeat_interval_s": "0.25",
    "registration_ttl_s": "3",
    "read_block_ms": "20",
}
"""Worker settings for fault tests: a dead worker's requests are taken over after about a second."""


@dataclass
class StreamOutcome:
    """What one streaming client saw: the text deltas in order, how the stream ended, and when."""

    prompt: str
    max_tokens: int
    deltas: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    status: int | None = None
    saw_done: bool = False
    hung: bool = False
    elapsed_s: float = 0.0

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def expected(self) -> str:
        return continuation(self.prompt, self.max_tokens)

    @property
    def completed(self) -> bool:
        return self.finish_reason == "length" and self.error is None

    def problem(self) -> str | None:
        """Why this outcome breaks a promise to the user, or None: a completed stream has exactly the echo
        engine's text; a failed one carries an error message and what it got before is a prefix of that text
        (no duplicated or interleaved tokens)."""
        if self.hung:
            return f"still open after {self.elapsed_s:.1f} s (past its deadline)"
        if self.completed:
            return None if self.text == self.expected else f"text {self.text!r} != {self.expected!r}"
        if not self.error:
            return f"ended without a finish_reason or an error (status {self.status}, done={self.saw_done})"
        if not self.expected.startswith(self.text):
            return f"partial text {self.text!r} is not a prefix of {self.expected!r}"
        return None


def distinct_prompt(index: int) -> str:
    """Prompts whose echo continuations differ from their neighbours', so interleaved streams show."""
    return f"request {index} " + CYCLE[index % 26]


def read_sse_line(outcome: StreamOutcome, line: str) -> None:
    if not line.startswith("data: "):
        return
    data = line.removeprefix("data: ")
    if data == "[DONE]":
        outcome.saw_done = True
        return
    event = json.loads(data)
    if "error" in event:
        outcome.error = event["error"].get("message") or "error without a message"
        return
    choice = event["choices"][0]
    outcome.deltas.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
    if choice.get("finish_reason"):
        outcome.finish_reason = choice["finish_reason"]


async def stream_completion(
    client: httpx.AsyncClient, api: str, prompt: str, max_tokens: int, timeout_s: float
) -> StreamOutcome:
    """One streaming completion; a transport failure or an HTTP error is recorded as the outcome's error."""
    outcome = StreamOutcome(prompt, max_tokens)
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "use_speculative": False}
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", f"{api}/v1/completions", json=body) as reply:
                outcome.status = reply.status_code
                if reply.status_code != 200:
                    outcome.error = json.loads(await reply.aread())["error"]["message"]
                else:
                    async for line in reply.aiter_lines():
                        read_sse_line(outcome, line)
    except TimeoutError:
        outcome.hung = True
    except httpx.HTTPError as exc:
        outcome.error = f"transport: {type(exc).__name__}: {exc}"
    outcome.elapsed_s = time.monotonic() - started
    return outcome


async def stream_many(api: str, count: int, max_tokens: int, timeout_s: float) -> list[StreamOutcome]:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        return await asyncio.gather(
            *(stream_completion(client, api, distinct_prompt(i), max_tokens, timeout_s) for i in range(count))
        )


def problems(outcomes: list[StreamOutcome]) -> list[str]:
    return [f"{o.prompt!r}: {problem}" for o in outcomes if (problem := o.problem()) is not None]


def live_worker_count(redis_url: str, namespace: str, model: str = "echo") -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return len(list(client.scan_iter(match=RedisNames(namespace).worker_pattern(model))))
    finally:
        client.close()


def wait_for_workers(redis_url: str, namespace: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while live_worker_count(redis_url, namespace) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} workers did not register within {timeout_s} s")
        time.sleep(0.05)


def wait_for(condition: Callable[[], object], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())


@contextmanager
def platform_on(redis_url: str, **extra_env: str) -> Iterator[LocalServices]:
    """API and worker processes on `redis_url` under a fresh namespace; stopped (and the namespace removed)
    on exit."""
    with services_in_fresh_namespace(redis_url, extra_env, prefix="gorgon-rel") as services:
        yield services


@dataclass
class RestartableRedis:
    """A private redis-server that a test can stop and start again on the same port (same URL)."""

    port: int
    server: PrivateRedis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = start_private_redis(self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


SOAK_ENV = "GORGON_SOAK"
"""Set (as `make soak` does) to run the fault suite at its long sizes instead of the CI ones."""


def sized(ci: int, soak: int) -> int:
    """The CI size of a test's load, or its soak size under `make soak`."""
    return soak if os.environ.get(SOAK_ENV) else ci


@dataclass
class TimedStream:
    """One streaming request as a client sees it, with the arrival time of every content event."""

    arrivals: list[float] = field(default_factory=list)
    text: str = ""
    request_id: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    status: int | None = None

    def gaps_between(self, start: float, end: float) -> list[float]:
        """The gaps between successive events that end inside [start, end] (monotonic seconds)."""
        return [
            later - earlier
            for earlier, later in zip(self.arrivals, self.arrivals[1:], strict=False)
            if start <= later <= end
        ]


async def timed_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, object], outcome: TimedStream
) -> TimedStream:
    """POST `body` with `stream: true` to `url`, recording into `outcome` as events arrive (a caller may watch it
    fill) each event's arrival time (time.monotonic())."""
    async with client.stream("POST", url, json={**body, "stream": True}) as reply:
        outcome.status = reply.status_code
        if reply.status_code != 200:
            outcome.error = json.loads(await reply.aread())["error"]["message"]
            return outcome
        async for line in reply.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                outcome.error = event["error"].get("message") or "error without a message"
                continue
            choice = event["choices"][0]
            outcome.request_id = event.get("id", outcome.request_id)
            outcome.text += choice.get("text") or choice.get("delta", {}).get("content") or ""
            outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason
            outcome.arrivals.append(time.monotonic())
    return outcome
