"""Preparation beside the event loop: batches prepared on a thread of their own, an item whose preparation raises
replaced by its error, and the loop free meanwhile."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest

from gorgon.core.errors import GorgonError
from gorgon.core.protocol import WireError
from gorgon.worker.preparation import PREPARATION_NICENESS, Preparation


async def test_items_are_prepared_off_the_loop_and_delivered_in_batches() -> None:
    delivered: list[list[tuple[str, object]]] = []
    threads: set[str] = set()

    def prepare(item: str) -> str:
        threads.add(threading.current_thread().name)
        time.sleep(0.2)
        if item == "bad":
            raise GorgonError("bad item", code="bad_item")
        if item == "broken":
            raise KeyError("internal")
        return item.upper()

    preparation: Preparation[str, str] = Preparation(prepare, delivered.append)
    preparation.start(["a", "bad", "broken"])
    ticks = 0
    while preparation.busy:
        await asyncio.sleep(0.01)
        ticks += 1
    preparation.close()
    assert ticks > 20, "the event loop ran while the batch was prepared"
    assert threads == {"prepare_0"}
    ((first, second, third),) = delivered
    assert first == ("a", "A")
    assert second == ("bad", WireError("bad item", "invalid_request_error", "bad_item", 400))
    assert isinstance(third[1], WireError) and third[1].status == 500 and "KeyError" in third[1].message


async def test_wait_returns_when_a_batch_is_ready_or_the_timeout_passes() -> None:
    preparation: Preparation[str, str] = Preparation(lambda item: time.sleep(0.3) or item, lambda _: None)
    started = time.monotonic()
    await preparation.wait(1.0)
    assert time.monotonic() - started < 0.05, "nothing to wait for"
    preparation.start(["x"])
    await preparation.wait(0.05)
    assert preparation.busy
    await preparation.wait(2.0)
    await asyncio.sleep(0)
    assert not preparation.busy
    preparation.close()


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is a Linux feature")
async def test_the_preparation_thread_runs_at_a_lower_priority() -> None:
    niceness: list[object] = []
    preparation: Preparation[str, int] = Preparation(
        lambda _: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
        lambda outcomes: niceness.extend(value for _, value in outcomes),
    )
    preparation.start(["x"])
    await preparation.wait(5)
    await asyncio.sleep(0)
    preparation.close()
    assert niceness == [os.getpriority(os.PRIO_PROCESS, 0) + PREPARATION_NICENESS]
