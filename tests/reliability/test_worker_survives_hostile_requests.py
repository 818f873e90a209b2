"""Schema-valid but hostile requests against the real model engine (SmolLM2 in one worker process, shared by every
case): sampling parameters at the ends of their ranges, stop sequences at their limits, the largest prompt and the
most messages the API admits. Each case checks what its client receives, that a stream in flight beside it
completes, and that the worker process is still the one that started (nothing crashed and was replaced).

The stall figures are logged (`pytest tests/reliability/test_worker_survives_hostile_requests.py -k "largest or
most" --log-cli-level=INFO`): the longest gap between the running stream's chunks while a huge request is out, as
the worker published them (their `published_at`, read back from the stream's progress list in Redis) and as the
client received them (which adds the API process's own time, such as parsing the huge body), against the stream's
usual gaps.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from reliability_harness import TimedStream, timed_stream

from gorgon.api.config import ApiSettings
from gorgon.core.limits import MAX_STOP_SEQUENCE_CHARS, MAX_STOP_SEQUENCES
from gorgon.core.protocol import Chunk
from gorgon.core.redis.names import RedisNames
from gorgon_testing import services_in_fresh_namespace

pytestmark = [pytest.mark.slow, pytest.mark.processes]

log = logging.getLogger(__name__)

MODEL_LOAD_TIMEOUT_S = 600.0
SMALLEST_FLOAT = 5e-324
BODY_LIMIT: int = ApiSettings.model_fields["max_body_bytes"].default
LONG_PROMPT_WORDS = 1500
RUNNING_PROMPT = "Count from 1 to 300, one number per line:\n1\n2\n3\n"
Hostile = Callable[[httpx.AsyncClient], Awaitable[Any]]


@dataclass
class Platform:
    api: str
    worker: subprocess.Popen[bytes]
    redis_url: str
    names: RedisNames

    def assert_worker_unharmed(self) -> None:
        assert self.worker.poll() is None, "the worker process ended"

    def published_at(self, request_id: str | None) -> list[float]:
        """When the worker published each chunk of a streaming request (its progress list)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            raw = client.lrange(self.names.progress_key(str(request_id)), 0, -1)
        finally:
            client.close()
        return [Chunk.decode(chunk).published_at for chunk in raw]


@pytest.fixture(scope="module")
def platform(redis_url: str) -> Iterator[Platform]:
    with services_in_fresh_namespace(redis_url, grace_s=20) as services:
        worker = services.start_worker("medusa", max_batch_size="4", worker_id="hostile-target")
        api = services.start_api(ready_timeout_s=MODEL_LOAD_TIMEOUT_S)
        yield Platform(api, worker, services.redis_url, RedisNames(services.namespace))


@dataclass
class Gaps:
    """A stream's gaps between successive chunks: the longest while the hostile requests were out, the longest
    at other times, the median."""

    during: float
    elsewhere: float
    median: float

    @classmethod
    def of(cls, times: list[float], start: float, end: float) -> Gaps:
        stream = TimedStream(arrivals=times)
        during = stream.gaps_between(start, end)
        every = stream.gaps_between(float("-inf"), float("inf"))
        others = [gap for gap in every if gap not in during]
        return cls(max(during, default=0.0), max(others, default=0.0), statistics.median(every))

    def __str__(self) -> str:
        return f"longest {self.during:.3f} s meanwhile, {self.elsewhere:.3f} s at other times, median {self.median:.3f} s"


@dataclass
class BesideAStream:
    """What the hostile requests got, and the stream that ran beside them (started before, ended after);
    `sent_at` and `answered_at` in both clocks (monotonic for arrivals, Unix time for published_at)."""

    result: Any
    running: TimedStream
    sent_at: float
    answered_at: float
    sent_at_unix: float
    answered_at_unix: float


def beside_a_running_stream(platform: Platform, hostile: Hostile, max_tokens: int = 48) -> BesideAStream:
    """Run `hostile` once a greedy stream is producing tokens; both finish before this returns. Then the worker
    process must still be the one that started."""
    outcome = asyncio.run(_beside(platform.api, hostile, max_tokens))
    platform.assert_worker_unharmed()
    running = outcome.running
    assert running.error is None and running.finish_reason in {"length", "stop"}, running
    return outcome


async def _beside(api: str, hostile: Hostile, max_tokens: int) -> BesideAStream:
    async with httpx.AsyncClient(timeout=httpx.Timeout(300)) as client:
        body = {"prompt": RUNNING_PROMPT, "max_tokens": max_tokens, "temperature": 0}
        running = TimedStream()
        task = asyncio.create_task(timed_stream(client, f"{api}/v1/completions", body, running))
        async with asyncio.timeout(120):
            while len(running.arrivals) < 3 and not task.done():
                await asyncio.sleep(0.01)
        sent_at, sent_at_unix = time.monotonic(), time.time()
        result = await hostile(client)
        answered_at, answered_at_unix = time.monotonic(), time.time()
        await task
    return BesideAStream(result, running, sent_at, answered_at, sent_at_unix, answered_at_unix)


def completions(api: str, bodies: list[dict[str, Any]]) -> Hostile:
    async def send(client: httpx.AsyncClient) -> list[httpx.Response]:
        return list(
            await asyncio.gather(*(client.post(f"{api}/v1/completions", json=body) for body in bodies))
        )

    return send


def assert_error(reply: httpx.Response, status: int, code: str | None = None) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error


GREEDY_EQUIVALENT = [
    {"temperature": 1e-40},
    {"temperature": SMALLEST_FLOAT, "top_p": SMALLEST_FLOAT},
    {"temperature": 2.0, "top_p": SMALLEST_FLOAT, "use_speculative": False},
]
SAMPLED = [
    {"temperature": 2.0, "seed": -(2**63)},
    {"temperature": 1.0, "top_p": 0.5, "seed": 2**63 - 1},
    {"temperature": 2.0, "top_p": 1.0, "seed": -1},
]


def test_sampling_parameters_at_the_ends_of_their_ranges_are_served(platform: Platform) -> None:
    """Temperatures below 1e-5 decode greedily (the same text as temperature 0), so does the smallest top_p;
    seeds at both ends of int64 sample."""
    prompt = {"prompt": "The three primary colours are", "max_tokens": 8}
    (greedy,) = asyncio.run(_send_all(platform.api, [{**prompt, "temperature": 0}]))
    bodies = [{**prompt, **fields} for fields in GREEDY_EQUIVALENT + SAMPLED]
    outcome = beside_a_running_stream(platform, completions(platform.api, bodies))
    for body, reply in zip(bodies, outcome.result, strict=True):
        assert reply.status_code == 200, (body, reply.text)
        choice = reply.json()["choices"][0]
        assert choice["finish_reason"] in {"length", "stop"}
        if body in [{**prompt, **fields} for fields in GREEDY_EQUIVALENT]:
            assert choice["text"] == greedy.json()["choices"][0]["text"], body


async def _send_all(api: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(300)) as client:
        return await completions(api, bodies)(client)


def test_stop_sequences_at_their_limits(platform: Platform) -> None:
    longest = ["\u00e9" + "x" * (MAX_STOP_SEQUENCE_CHARS - 2) + str(index) for index in range(4)]
    bodies = [
        {"prompt": "Say hello.", "max_tokens": 16, "temperature": 0, "stop": longest[:MAX_STOP_SEQUENCES]},
        {"prompt": "Say hello.", "max_tokens": 16, "stop": ["y" * (MAX_STOP_SEQUENCE_CHARS + 1)]},
    ]
    admitted, too_long = beside_a_running_stream(platform, completions(platform.api, bodies)).result
    assert admitted.status_code == 200, admitted.text
    assert admitted.json()["choices"][0]["finish_reason"] in {"length", "stop"}
    assert_error(too_long, 400)


def test_the_largest_prompt_is_refused_without_stalling_the_running_stream(platform: Platform) -> None:
    prompt = "All work and no play makes Jack a dull boy. " * ((BODY_LIMIT - 200) // 44)
    body = {"prompt": prompt, "max_tokens": 4}
    outcome = beside_a_running_stream(platform, completions(platform.api, [body]), max_tokens=200)
    (reply,) = outcome.result
    assert_error(reply, 400, "context_length_exceeded")
    _assert_no_stall(platform, f"a prompt of {len(prompt)} characters", outcome)


def test_the_most_messages_are_refused_without_stalling_the_running_stream(platform: Platform) -> None:
    """As many messages as the body limit admits (refused before templating: more messages than the context has
    tokens), and as many as the context has tokens (templated and tokenised, then refused as too long)."""
    context = httpx.get(f"{platform.api}/v1/models", timeout=30).json()["data"][0]["context_length"]
    message = {"role": "user", "content": "hi"}
    most = (BODY_LIMIT - 200) // (len('{"role":"user","content":"hi"},') + 1)
    bodies = [{"messages": [message] * count, "max_tokens": 4} for count in (most, context)]

    async def send(client: httpx.AsyncClient) -> list[httpx.Response]:
        url = f"{platform.api}/v1/chat/completions"
        return list(await asyncio.gather(*(client.post(url, json=body) for body in bodies)))

    outcome = beside_a_running_stream(platform, send, max_tokens=200)
    for reply in outcome.result:
        assert_error(reply, 400, "context_length_exceeded")
    _assert_no_stall(platform, f"{most} and {context} chat messages", outcome)


def test_a_long_prompt_is_prefilled_in_chunks_between_the_running_streams_steps(platform: Platform) -> None:
    """A prompt of about 1500 tokens is written a chunk per step, taking turns with the running stream's steps:
    the stream keeps getting tokens while the prompt is prefilled, instead of waiting for the whole prefill."""
    body = {"prompt": "word " * LONG_PROMPT_WORDS, "max_tokens": 4, "temperature": 0}
    outcome = beside_a_running_stream(platform, completions(platform.api, [body]), max_tokens=300)
    (reply,) = outcome.result
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] >= LONG_PROMPT_WORDS
    published = platform.published_at(outcome.running.request_id)
    worker = Gaps.of(published, outcome.sent_at_unix, outcome.answered_at_unix)
    answered_in = outcome.answered_at - outcome.sent_at
    during = [time for time in published if outcome.sent_at_unix <= time <= outcome.answered_at_unix]
    log.info(
        "a prompt of %d tokens: answered in %.2f s, meanwhile the running stream got %d chunks; its gaps as "
        "published by the worker: %s",
        reply.json()["usage"]["prompt_tokens"],
        answered_in,
        len(during),
        worker,
    )
    assert outcome.running.arrivals[-1] > outcome.answered_at, "the stream ran past the long prompt"
    assert worker.during < answered_in / 3, f"the stream waited for most of the prefill: {worker}"


def _assert_no_stall(platform: Platform, what: str, outcome: BesideAStream) -> None:
    """While the huge request was out, the worker kept publishing the running stream's chunks at about their
    pace: no gap much longer than the stream's gaps at other times (a speculative step or a busy moment of a
    shared 2-core machine makes some long) or than three usual ones. Preparing the request on the engine thread
    would show as a gap of the whole preparation (over a second for the largest prompt)."""
    published = platform.published_at(outcome.running.request_id)
    worker = Gaps.of(published, outcome.sent_at_unix, outcome.answered_at_unix)
    client = Gaps.of(outcome.running.arrivals, outcome.sent_at, outcome.answered_at)
    log.info(
        "%s: answered in %.2f s; the running stream's gaps as published by the worker: %s; as received: %s",
        what,
        outcome.answered_at - outcome.sent_at,
        worker,
        client,
    )
    assert outcome.running.arrivals[-1] > outcome.answered_at, "the stream ran past the huge request"
    assert worker.during <= max(3 * worker.median, 1.5 * worker.elsewhere), f"{what}: worker gaps {worker}"
