"""`gorgon bench telemetry` measures its three stacks and leaves tracing as it found it (off)."""

from __future__ import annotations

import asyncio

from gorgon.bench import telemetry, telemetry_run
from gorgon.core import tracing


def test_the_bench_reports_every_stack_and_turns_tracing_back_off() -> None:
    medians = asyncio.run(telemetry_run.measure(requests=50, rounds=1))
    assert list(medians) == ["bare app", "telemetry, tracing off", "telemetry, tracing on"]
    assert all(value > 0 for value in medians.values())
    assert tracing.tracer() is None
    rows = telemetry.table(medians).splitlines()
    assert len(rows) == 2 + len(medians) and rows[2].startswith("| bare app |")
