"""A whole load test: the load levels to run (one, a concurrency sweep, each in standard and speculative
mode when comparing, and against a baseline server when one is given), run one after another, then the
reports."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gorgon.core.errors import GorgonError
from gorgon_loadtest.plan import LoadTestPlan
from gorgon_loadtest.plots import write_plots
from gorgon_loadtest.record import RunResult
from gorgon_loadtest.report import (
    REQUESTS_FILE,
    SUMMARY_FILE,
    SUMMARY_TABLE_FILE,
    write_requests_csv,
    write_summary,
    write_summary_table,
)
from gorgon_loadtest.runner import LoadRunner
from gorgon_loadtest.stats import summarize_all
from gorgon_loadtest.target import Target

log = logging.getLogger(__name__)

PREFLIGHT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class LoadTestResult:
    summary: dict[str, Any]
    runs: list[RunResult]
    files: list[Path]


async def execute(plan: LoadTestPlan) -> LoadTestResult:
    """Run every level of `plan` and write summary.json, requests.csv and the plots into `plan.out_dir`."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(timeout=httpx.Timeout(plan.bounds.timeout_s), trust_env=False) as client:
        targets = {target.name: target for target in plan.targets}
        for target in plan.targets:
            await _preflight(client, target)
        runner = LoadRunner(
            client,
            plan.prompts,
            plan.settings,
            plan.bounds,
            seed=plan.seed,
            show_progress=plan.show_progress,
        )
        if plan.warmup_requests:
            for server, mode in dict.fromkeys((level.server, level.mode) for level in plan.levels):
                await runner.warm_up(targets[server], mode, plan.warmup_requests)
        runs = [await runner.run(targets[level.server], level) for level in plan.levels]
    return _write_reports(plan, runs)


async def _preflight(client: httpx.AsyncClient, target: Target) -> None:
    """Fail with one clear line when nothing listens at the target."""
    try:
        await client.get(target.models_url, timeout=PREFLIGHT_TIMEOUT_S)
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise GorgonError(f"cannot reach {target.base_url}: {reason}", param="url") from exc


def _write_reports(plan: LoadTestPlan, runs: list[RunResult]) -> LoadTestResult:
    summary = _describe(plan) | summarize_all(runs)
    summary_path = plan.out_dir / SUMMARY_FILE
    table_path = plan.out_dir / SUMMARY_TABLE_FILE
    csv_path = plan.out_dir / REQUESTS_FILE
    write_summary(summary, summary_path)
    write_summary_table(summary, table_path)
    write_requests_csv(runs, csv_path)
    plots = write_plots(runs, summary["runs"], plan.out_dir)
    return LoadTestResult(summary=summary, runs=runs, files=[summary_path, table_path, csv_path, *plots])


def _describe(plan: LoadTestPlan) -> dict[str, Any]:
    return {
        "url": plan.targets[0].request_url,
        "servers": {target.name or "server": target.request_url for target in plan.targets},
        "max_tokens": plan.settings.max_tokens,
        "temperature": plan.settings.temperature,
        "prompt_set": plan.prompt_set,
        "max_requests_per_run": plan.bounds.requests,
        "max_duration_per_run_s": plan.bounds.duration_s,
        "warmup_requests": plan.warmup_requests,
    }
