"""Summaries of recorded requests: percentiles of each latency, throughput, errors by type."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from gorgon_loadtest.record import Mode, RequestRecord, RunResult

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft", "itl", "tpot", "e2e")
COMPARED_METRICS = ("output_tokens_per_s", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s", "e2e_p99_s")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default);
    None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def latency_samples(records: Iterable[RequestRecord]) -> dict[str, list[float]]:
    """Per latency kind, the samples of the successful requests (ITL: every gap of every request)."""
    samples: dict[str, list[float]] = {kind: [] for kind in LATENCIES}
    for record in records:
        outcome = record.outcome
        if not outcome.ok:
            continue
        samples["itl"].extend(outcome.itls_s)
        for kind, value in (("ttft", outcome.ttft_s), ("tpot", outcome.tpot_s), ("e2e", outcome.e2e_s)):
            if value is not None:
                samples[kind].append(value)
    return samples


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict[str, Any]:
    """The summary of requests that ran for `wall_s` seconds of wall-clock time."""
    completed = [record for record in records if record.outcome.ok]
    error_types = Counter(record.outcome.error_type for record in records if not record.outcome.ok)
    output_tokens = sum(record.outcome.output_tokens for record in completed)
    summary: dict[str, Any] = {
        "requests": len(records),
        "completed": len(completed),
        "errors": len(records) - len(completed),
        "error_types": dict(sorted(error_types.items())),
        "duration_s": wall_s,
        "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / wall_s if wall_s > 0 else 0.0,
        "requests_per_s": len(completed) / wall_s if wall_s > 0 else 0.0,
    }
    for kind, values in latency_samples(records).items():
        for q in PERCENTILES:
            summary[f"{kind}_p{q}_s"] = percentile(values, q)
        summary[f"{kind}_mean_s"] = sum(values) / len(values) if values else None
    return summary


def summarize_run(run: RunResult) -> dict[str, Any]:
    """One load level's summary, with the level it ran at."""
    level: dict[str, Any] = {
        "label": run.level.label,
        "server": run.level.server,
        "mode": str(run.level.mode),
    }
    level |= {"variant": run.level.variant, "concurrency": run.level.concurrency, "rate": run.level.rate}
    return level | summarize(run.records, run.wall_s) | _client_load(run.client_cpu_s, run.wall_s)


def summarize_all(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Every request of every run pooled (runs are sequential, so their wall times add up), then each run."""
    records = [record for run in runs for record in run.records]
    wall_s = sum(run.wall_s for run in runs)
    pooled = summarize(records, wall_s) | _client_load(sum(run.client_cpu_s for run in runs), wall_s)
    return pooled | {
        "runs": [summarize_run(run) for run in runs],
        "comparison": compare_modes(runs),
        "server_comparison": compare_servers(runs),
    }


def compare_modes(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Speculative against standard on each server at each load both ran at: ratios > 1 mean speculative
    is higher."""
    by_key = _summaries_by_key(runs)
    rows = []
    for (server, mode, concurrency, rate), standard in by_key.items():
        speculative = by_key.get((server, Mode.SPECULATIVE, concurrency, rate))
        if mode is Mode.STANDARD and speculative is not None:
            rows.append(_ratios(speculative, standard) | {"server": server})
    return rows


def compare_servers(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """The server under test (the first run's) in each of its modes against every other server's standard
    mode at each load both ran at: ratios > 1 mean the server under test is higher."""
    if not runs:
        return []
    main = runs[0].level.server
    by_key = _summaries_by_key(runs)
    rows = []
    for (server, mode, concurrency, rate), baseline in by_key.items():
        if server == main or mode is not Mode.STANDARD:
            continue
        for ours_mode in Mode:
            ours = by_key.get((main, ours_mode, concurrency, rate))
            if ours is not None:
                rows.append(
                    _ratios(ours, baseline) | {"server": main, "mode": str(ours_mode), "baseline": server}
                )
    return rows


def _summaries_by_key(
    runs: Sequence[RunResult],
) -> dict[tuple[str, Mode, int | None, float | None], dict[str, Any]]:
    return {(r.level.server, r.level.mode, r.level.concurrency, r.level.rate): summarize_run(r) for r in runs}


def _ratios(numerator: dict[str, Any], denominator: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"concurrency": numerator["concurrency"], "rate": numerator["rate"]}
    for metric in COMPARED_METRICS:
        row[f"{metric}_ratio"] = _ratio(numerator[metric], denominator[metric])
    return row


def _client_load(cpu_s: float, wall_s: float) -> dict[str, float]:
    """CPU the load generator used: seconds, and cores' worth on average over the run."""
    return {"client_cpu_s": cpu_s, "client_cpu_cores": cpu_s / wall_s if wall_s > 0 else 0.0}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator
