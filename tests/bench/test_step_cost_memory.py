"""The peak memory of a measured span on CPU: the process's peak resident set, reset at the span's start where
Linux allows it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gorgon.bench import step_cost_memory
from gorgon.bench.step_cost_memory import CUDA_PEAK_ALLOCATED, PROCESS_PEAK_RSS, PeakMemory, process_peak_rss

MIB = 2**20


def _touch(megabytes: int) -> bytearray:
    block = bytearray(megabytes * MIB)
    block[::4096] = b"\x01" * len(block[::4096])  # resident, page by page
    return block


def test_the_kind_names_what_is_measured() -> None:
    assert PeakMemory(torch.device("cpu")).kind == PROCESS_PEAK_RSS
    assert PeakMemory(torch.device("cuda")).kind == CUDA_PEAK_ALLOCATED


def test_a_span_that_allocates_peaks_at_least_that_much_higher() -> None:
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()
    before = process_peak_rss()
    block = _touch(64)
    assert memory.peak_bytes() >= before + 60 * MIB
    del block


def _peak_resettable() -> bool:
    try:
        step_cost_memory.PROC_CLEAR_REFS.write_text(step_cost_memory.RESET_PEAK_RSS)
    except OSError:
        return False
    return True


def test_a_reset_forgets_the_peak_of_an_earlier_span() -> None:
    if not _peak_resettable():
        pytest.skip("the kernel refuses to reset the peak RSS: peaks count from the process start")
    memory = PeakMemory(torch.device("cpu"))
    block = _touch(128)
    earlier_peak = memory.peak_bytes()
    del block
    memory.reset()
    assert memory.peak_bytes() < earlier_peak - 100 * MIB


def test_without_proc_the_peak_comes_from_getrusage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(step_cost_memory, "PROC_STATUS", tmp_path / "missing")
    peak = process_peak_rss()
    assert 10 * MIB < peak < 1024 * 1024 * MIB
