"""Redis losing data under load. A FLUSHALL mid-request: the requests still queued fail within seconds with a
clean 503 (not at their deadline), the ones a worker holds finish exactly, no worker restarts, and serving goes
on. A stale progress list (a snapshot that cut its tail, after which the worker went on appending) met by the
worker's death: the requests resumed from it still reach their clients exactly once, in order."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import httpx
import pytest
import redis
from reliability_harness import (
    FAST_TAKEOVER,
    RestartableRedis,
    StreamOutcome,
    distinct_prompt,
    platform_on,
    problems,
    stream_completion,
    stream_many,
    wait_for,
    wait_for_workers,
)

from gorgon.core.protocol import PAYLOAD_FIELD, RequestPayload
from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.core.redis.requests import LOST_AFTER_S

pytestmark = pytest.mark.processes

log = logging.getLogger(__name__)

STEP_DELAY_S = 0.02
MAX_TOKENS = 200
KEPT_CHUNKS = 10
PUBLISHING_ON_S = 0.3


def in_background(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    return thread, result


def pending_by_consumer(client: redis.Redis, names: RedisNames) -> dict[str, list[str]]:
    """Request ids of the pending entries, by the consumer (worker id) holding them."""
    stream = names.request_stream("echo")
    held: dict[str, list[str]] = {}
    for entry in client.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=100):
        entry_id = entry["message_id"]
        ((_, fields),) = client.xrange(stream, entry_id, entry_id)
        payload = RequestPayload.decode(fields[PAYLOAD_FIELD])
        held.setdefault(entry["consumer"].decode(), []).append(payload.request_id)
    return held


def process_of(consumer: str, workers: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """The worker process behind a consumer name (host-pid-suffix, see worker/serve.py)."""
    pid = int(consumer.rsplit("-", 2)[1])
    return next(worker for worker in workers if worker.pid == pid)


def test_requests_redis_lost_fail_in_seconds_and_those_a_worker_holds_finish(
    own_redis: RestartableRedis,
) -> None:
    with platform_on(own_redis.url) as services:
        client = redis.Redis.from_url(own_redis.url)
        names = RedisNames(services.namespace)
        worker = services.start_worker("echo", STEP_DELAY_S, max_batch_size="2", read_block_ms="20")
        api = services.start_api()
        holding, held_outcomes = in_background(lambda: asyncio.run(stream_many(api, 2, MAX_TOKENS, 60)))
        assert wait_for(lambda: sum(map(len, pending_by_consumer(client, names).values())) == 2, 10)

        async def queued_stream() -> StreamOutcome:
            async with httpx.AsyncClient(timeout=60) as http:
                return await stream_completion(http, api, distinct_prompt(7), 20, 60)

        body = {"prompt": "abc", "max_tokens": 3, "use_speculative": False}
        queued = [
            in_background(lambda: asyncio.run(queued_stream())),
            in_background(lambda: httpx.post(f"{api}/v1/completions", json=body, timeout=60)),
        ]
        assert wait_for(lambda: client.xlen(names.request_stream("echo")) == 4, 10)
        client.flushall()
        flushed_at = time.monotonic()
        for thread, _ in queued:
            thread.join(60)
        failed_after_s = time.monotonic() - flushed_at
        holding.join(60)

        (lost_stream,), (lost_whole,) = (result for _, result in queued)
        (in_flight,) = held_outcomes
        log.info(
            "FLUSHALL with 2 requests held and 2 queued: held %s; queued failed %.1f s later with %r / %d %s",
            ["completed" if o.completed else o.error for o in in_flight],
            failed_after_s,
            lost_stream.error,
            lost_whole.status_code,
            lost_whole.json()["error"]["code"],
        )
        assert lost_stream.status == 200 and "lost this request" in (lost_stream.error or "")
        assert lost_stream.text == "" and lost_stream.saw_done
        assert lost_whole.status_code == 503 and lost_whole.json()["error"]["code"] == "request_lost"
        assert lost_whole.headers["retry-after"] == "1"
        assert failed_after_s < LOST_AFTER_S + 4, "the lost requests waited for their deadline"
        assert problems(in_flight) == [] and all(o.completed for o in in_flight)
        assert worker.poll() is None, "the worker exited"

        def served_again() -> bool:
            reply = httpx.post(f"{api}/v1/completions", json=body, timeout=30)
            return reply.status_code == 200 and reply.json()["choices"][0]["text"] == "def"

        assert wait_for(served_again, 15, interval_s=0.5), "serving did not resume after the flush"
        client.close()


def test_a_request_resumed_from_a_stale_progress_list_reaches_its_client_exactly(redis_url: str) -> None:
    with platform_on(redis_url) as services:
        client = redis.Redis.from_url(redis_url)
        names = RedisNames(services.namespace)
        workers = [services.start_worker("echo", STEP_DELAY_S, **FAST_TAKEOVER) for _ in range(2)]
        api = services.start_api()
        wait_for_workers(redis_url, services.namespace, 2)
        load, results = in_background(lambda: asyncio.run(stream_many(api, 4, MAX_TOKENS, 60)))

        def a_worker_published_enough() -> bool:
            held = pending_by_consumer(client, names)
            return any(
                all(client.llen(names.progress_key(request_id)) > 3 * KEPT_CHUNKS for request_id in ids)
                for ids in held.values()
            )

        assert wait_for(a_worker_published_enough, 15)
        consumer, request_ids = next(
            (consumer, ids)
            for consumer, ids in pending_by_consumer(client, names).items()
            if all(client.llen(names.progress_key(request_id)) > 3 * KEPT_CHUNKS for request_id in ids)
        )
        victim = process_of(consumer, workers)
        for request_id in request_ids:  # as a snapshot taken a while ago holds them
            client.ltrim(names.progress_key(request_id), 0, KEPT_CHUNKS - 1)
        time.sleep(PUBLISHING_ON_S)  # the worker appends chunks past the gap: the list's length is no seq
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        load.join(60)

        (outcomes,) = results
        survivor = next(worker for worker in workers if worker is not victim)
        log.info(
            "worker killed holding %d streams whose progress lists were cut to %d chunks: %d of %d completed",
            len(request_ids),
            KEPT_CHUNKS,
            sum(o.completed for o in outcomes),
            len(outcomes),
        )
        assert problems(outcomes) == [], "duplicated, missing or interleaved text"
        assert all(o.completed for o in outcomes), [o.error for o in outcomes]
        assert survivor.poll() is None, "the surviving worker exited"
        client.close()
