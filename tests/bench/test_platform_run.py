"""`gorgon bench platform`'s measuring: its load loops against the HTTP ceiling app, how SSE delivery is
timed, and the figures of a list of latencies."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import pytest
import uvicorn

from gorgon.bench import ceiling
from gorgon.bench.platform_run import PROMPT, _publish_to_receive_delays, closed_loop, figures, open_loop


@pytest.fixture
async def ceiling_port() -> AsyncIterator[int]:
    """The constant FastAPI route of bench/ceiling.py, served in this event loop on a free port."""
    config = uvicorn.Config(ceiling.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    await serving


async def test_the_loops_count_every_answer(ceiling_port: int) -> None:
    body = json.dumps({"prompt": PROMPT, "max_tokens": 1}).encode()
    closed = await closed_loop("127.0.0.1", ceiling_port, body, 2, 0.2, "closed loop")
    assert closed.requests > 0 and closed.errors == 0
    latency, lag = await open_loop("127.0.0.1", ceiling_port, body, rate=50.0, duration=0.2)
    assert (latency.requests, latency.errors, lag.requests) == (10, 0, 10)


def event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def test_each_event_is_timed_by_the_piece_that_completes_it() -> None:
    first = event({"choices": [{"text": "a"}], "gorgon_published_at": 100.0})
    second = event({"choices": [{"text": "b"}], "gorgon_published_at": 100.5})
    arrivals = [(100.25, first + second[:10]), (101.0, second[10:] + b"data: [DONE]\n\n")]
    assert _publish_to_receive_delays(arrivals) == [0.25, 0.5]


def test_events_without_a_publish_time_are_not_counted() -> None:
    error = event({"error": {"message": "worker lost"}})
    untimed = event({"choices": [{"text": "a"}]})
    assert (
        _publish_to_receive_delays([(1.0, b": keep-alive\n\n" + untimed + error + b"data: [DONE]\n\n")]) == []
    )


def test_an_event_that_is_not_json_is_an_error() -> None:
    with pytest.raises(ValueError):
        _publish_to_receive_delays([(1.0, b"data: {not json\n\n")])


def test_figures_take_the_nearest_rank_below_each_percentile() -> None:
    result = figures([0.001 * value for value in range(1, 101)], errors=2, seconds=4.0)
    assert (result.requests, result.errors, result.per_second) == (100, 2, 25.0)
    assert (result.p50_ms, result.p99_ms) == pytest.approx((51.0, 100.0))
    assert math.isnan(figures([], 0, 1.0).p50_ms)
