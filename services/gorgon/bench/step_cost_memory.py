"""The peak memory of a measured span, for `gorgon bench step-cost` and `gorgon bench gpu-check`.

On CUDA it is the peak of what torch allocated on the device (`torch.cuda.max_memory_allocated`), reset at the
start of the span. On CPU it is the process's peak resident set: Linux's high-water mark (VmHWM), reset by
writing 5 to /proc/self/clear_refs; where that reset is refused (or there is no /proc), the peak since the
process started. Each figure carries its kind, so a CPU figure is never read as device memory.
"""

from __future__ import annotations

import logging
import re
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CUDA_PEAK_ALLOCATED = "cuda_peak_allocated"
PROCESS_PEAK_RSS = "process_peak_rss"
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"  # clear_refs value that resets VmHWM to the current resident set
KIB = 1024


@dataclass(frozen=True, slots=True)
class PeakMemory:
    """Peak memory of spans on `device`: `reset()` at a span's start, `peak_bytes()` at its end."""

    device: torch.device

    @property
    def kind(self) -> str:
        return CUDA_PEAK_ALLOCATED if self.device.type == "cuda" else PROCESS_PEAK_RSS

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
        except OSError as exc:
            log.debug("peak RSS not resettable (%s): peaks count from the process start", exc)

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return process_peak_rss()


def process_peak_rss() -> int:
    """The process's peak resident set in bytes: VmHWM where /proc has it, else getrusage's peak."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        return int(match.group(1)) * KIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * KIB  # macOS counts bytes, Linux and BSD KiB
