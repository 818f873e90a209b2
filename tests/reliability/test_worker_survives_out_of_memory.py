"""A worker process whose engine runs the device out of memory in the middle of a batch: every stream completes
with exactly the echo engine's text and the worker process is still the one that started, although a single
failed step would otherwise stop it (`max_failed_steps_in_row=1`).

The error is injected into the worker process through a `sitecustomize` module on its PYTHONPATH: the echo
engine's first step holding two rows raises `torch.OutOfMemoryError`, as CUDA's allocator does."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from reliability_harness import platform_on, problems, stream_many

pytestmark = pytest.mark.processes

STREAMS = 4
MAX_TOKENS = 40
STEP_DELAY_S = 0.02
REQUEST_TIMEOUT_S = 60.0
INJECTION = """
from pathlib import Path

from gorgon.engine.echo import EchoEngine

RAISED = Path(__file__).with_name("raised")
echo_step = EchoEngine.step


def step_out_of_memory_once(self):
    if len(self._rows) >= 2 and not RAISED.exists():
        import torch

        RAISED.touch()
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return echo_step(self)


EchoEngine.step = step_out_of_memory_once
"""


def test_streams_complete_and_the_worker_lives_through_an_out_of_memory_step(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(INJECTION)
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    with platform_on(redis_url, PYTHONPATH=python_path) as services:
        worker = services.start_worker("echo", STEP_DELAY_S, max_failed_steps_in_row="1")
        api = services.start_api()
        outcomes = asyncio.run(stream_many(api, STREAMS, MAX_TOKENS, REQUEST_TIMEOUT_S))
        assert (tmp_path / "raised").exists(), "the out-of-memory error was injected"
        assert problems(outcomes) == []
        assert all(outcome.completed for outcome in outcomes)
        assert worker.poll() is None, "the worker process is the one that started"
