"""Recorded requests built by hand, for the tests of the pure statistics, report and plot code."""

from __future__ import annotations

from gorgon_loadtest.record import LoadLevel, Mode, RequestRecord, RunResult, StreamOutcome


def ok_record(
    level: LoadLevel, index: int, *, ttft: float, itls: list[float], tokens: int | None = None
) -> RequestRecord:
    outcome = StreamOutcome(
        ttft_s=ttft,
        itls_s=list(itls),
        e2e_s=ttft + sum(itls),
        output_tokens=len(itls) + 1 if tokens is None else tokens,
        prompt_tokens=7,
        chunks=len(itls) + 1,
        finish_reason="length",
        status=200,
    )
    return RequestRecord(level=level, index=index, start_s=0.1 * index, outcome=outcome)


def failed_record(level: LoadLevel, index: int, error_type: str) -> RequestRecord:
    outcome = StreamOutcome(
        e2e_s=0.01, status=429 if error_type == "http_429" else None, error_type=error_type
    )
    outcome.error = "went wrong"
    return RequestRecord(level=level, index=index, start_s=0.1 * index, outcome=outcome)


def sample_run(mode: Mode, concurrency: int, *, slowdown: float = 1.0, requests: int = 10) -> RunResult:
    level = LoadLevel(mode=mode, concurrency=concurrency)
    records = [
        ok_record(level, index, ttft=0.1 * slowdown * (1 + index % 3), itls=[0.02 * slowdown] * 4)
        for index in range(requests)
    ]
    return RunResult(level=level, records=records, wall_s=2.0 * slowdown)
