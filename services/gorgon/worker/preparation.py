"""Preparing requests off the decode loop: tokenising a prompt or templating a chat takes time in proportion to
its size (a 1 MB prompt about a second on a CPU), so it runs on a thread of its own while the engine thread keeps
stepping the running batch. Entries read together are prepared together, so they still join the batch in one
step."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from gorgon.core.errors import GorgonError
from gorgon.core.protocol import WireError
from gorgon.worker.failures import request_error

log = logging.getLogger(__name__)

PREPARATION_NICENESS = 10
"""Niceness of the preparation thread (Linux; higher is lower priority): on a machine with few cores, preparing a
huge request takes the CPU time the decode steps leave instead of slowing every step of the running batch."""

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


class Preparation(Generic[Item, Prepared]):
    """Runs `prepare` over batches of items on one thread; hands each batch's outcomes to `deliver` on the event
    loop, with a WireError (request_error) in place of an item whose preparation raised."""

    def __init__(
        self,
        prepare: Callable[[Item], Prepared],
        deliver: Callable[[list[tuple[Item, Prepared | WireError]]], None],
    ) -> None:
        self._prepare = prepare
        self._deliver = deliver
        self._thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="prepare", initializer=_lower_thread_priority
        )
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def start(self, items: Sequence[Item]) -> None:
        if not items:
            return
        task = asyncio.create_task(self._run(list(items)), name="prepare-requests")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, timeout_s: float) -> None:
        """Until a batch is prepared or `timeout_s` passes."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _run(self, items: list[Item]) -> None:
        loop = asyncio.get_running_loop()
        self._deliver(await loop.run_in_executor(self._thread, self._prepare_all, items))

    def _prepare_all(self, items: list[Item]) -> list[tuple[Item, Prepared | WireError]]:
        return [(item, self._prepare_one(item)) for item in items]

    def _prepare_one(self, item: Item) -> Prepared | WireError:
        try:
            return self._prepare(item)
        except Exception as exc:  # the request fails alone, whatever its preparation raised
            if not isinstance(exc, GorgonError):
                log.exception("preparing a request failed")
            return request_error(exc)


def _lower_thread_priority() -> None:
    if sys.platform == "linux":  # elsewhere the call would set the whole process's priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREPARATION_NICENESS)
