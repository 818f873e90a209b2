"""What a load test is asked to do: plain data, cheap to import (the CLI builds it before any I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gorgon_loadtest.record import LoadLevel, Mode
from gorgon_loadtest.target import Target


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """What every request of a load test asks for."""

    max_tokens: int
    temperature: float
    model: str | None = None
    include_usage: bool = True


@dataclass(frozen=True, slots=True)
class Bounds:
    """Limits of one run: at most `requests` requests, none started after `duration_s`, each cut off after
    `timeout_s`; an open loop never has more than `max_in_flight` requests outstanding."""

    requests: int
    duration_s: float
    timeout_s: float
    max_in_flight: int


@dataclass(frozen=True, slots=True)
class LoadTestPlan:
    """`targets[0]` is the server under test; a second one is the baseline it is compared with."""

    targets: tuple[Target, ...]
    levels: tuple[LoadLevel, ...]
    prompts: list[str]
    settings: RequestSettings
    bounds: Bounds
    out_dir: Path
    warmup_requests: int = 0
    seed: int = 0
    show_progress: bool = True
    prompt_set: str = ""


def plan_levels(
    *,
    concurrencies: Sequence[int],
    rate: float | None,
    modes: Sequence[Mode],
    baseline: str | None = None,
    server: str = "",
) -> tuple[LoadLevel, ...]:
    """Every run, interleaved at each load (server under test in each mode, then the baseline server in
    standard mode) so that what is compared shares the machine's mood."""
    variants = [(server, mode) for mode in modes]
    if baseline is not None:
        variants.append((baseline, Mode.STANDARD))
    if rate is not None:
        return tuple(LoadLevel(mode=mode, rate=rate, server=name) for name, mode in variants)
    return tuple(
        LoadLevel(mode=mode, concurrency=c, server=name) for c in concurrencies for name, mode in variants
    )
