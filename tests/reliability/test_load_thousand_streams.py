"""A thousand concurrent SSE streams on the echo engine: every connection is opened before any request is sent,
so all of them are held by one API process at once, and every stream ends with exactly its own text."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from reliability_harness import StreamOutcome, distinct_prompt, platform_on, problems, sized, wait_for_workers
from sse_wire_client import finish_stream, open_stream

pytestmark = pytest.mark.processes

log = logging.getLogger(__name__)

STREAMS = 1000
TOKENS = sized(ci=8, soak=256)
ROUNDS = sized(ci=1, soak=5)
CLIENT_TIMEOUT_S = 240


async def thousand_streams(api: str) -> tuple[list[StreamOutcome], float]:
    host, port = api.removeprefix("http://").split(":")
    started = time.monotonic()
    connections = await asyncio.gather(*(open_stream(host, int(port)) for _ in range(STREAMS)))
    outcomes = [StreamOutcome(distinct_prompt(i), TOKENS) for i in range(STREAMS)]
    finished = await asyncio.gather(
        *(
            finish_stream(connection, host, outcome, CLIENT_TIMEOUT_S)
            for connection, outcome in zip(connections, outcomes, strict=True)
        )
    )
    return finished, time.monotonic() - started


def test_a_thousand_concurrent_streams_all_complete_exactly(redis_url: str) -> None:
    with platform_on(redis_url, GORGON_API_MAX_BACKLOG=str(STREAMS + 100)) as services:
        for _ in range(2):
            services.start_worker("echo", 0.0, read_block_ms="20")
        api = services.start_api()
        wait_for_workers(services.redis_url, services.namespace, 2)
        for round_ in range(ROUNDS):
            outcomes, elapsed_s = asyncio.run(thousand_streams(api))
            log.info(
                "round %d: %d streams x %d tokens in %.1f s (slowest stream %.1f s)",
                round_,
                STREAMS,
                TOKENS,
                elapsed_s,
                max(o.elapsed_s for o in outcomes),
            )
            assert problems(outcomes) == []
            assert all(outcome.completed and outcome.saw_done for outcome in outcomes)
