"""The files a load test leaves in its output directory: summary.json, summary.md and requests.csv."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gorgon_loadtest.record import RequestRecord, RunResult

SUMMARY_FILE = "summary.json"
SUMMARY_TABLE_FILE = "summary.md"
REQUESTS_FILE = "requests.csv"
MILLISECONDS = 1000.0
# (title, summary key, format, scale)
TABLE_COLUMNS = (
    ("run", "label", "{}", None),
    ("requests", "requests", "{}", None),
    ("errors", "errors", "{}", None),
    ("TTFT p50 (s)", "ttft_p50_s", "{:.3f}", None),
    ("TTFT p99 (s)", "ttft_p99_s", "{:.3f}", None),
    ("ITL p50 (ms)", "itl_p50_s", "{:.2f}", MILLISECONDS),
    ("TPOT p50 (ms)", "tpot_p50_s", "{:.2f}", MILLISECONDS),
    ("E2E p50 (s)", "e2e_p50_s", "{:.3f}", None),
    ("E2E p99 (s)", "e2e_p99_s", "{:.3f}", None),
    ("output tok/s", "output_tokens_per_s", "{:.1f}", None),
    ("req/s", "requests_per_s", "{:.2f}", None),
    ("client CPU (cores)", "client_cpu_cores", "{:.2f}", None),
)
CSV_COLUMNS = (
    "run",
    "mode",
    "concurrency",
    "rate",
    "index",
    "start_s",
    "status",
    "ttft_s",
    "e2e_s",
    "tpot_s",
    "itl_mean_s",
    "itl_max_s",
    "output_tokens",
    "prompt_tokens",
    "chunks",
    "finish_reason",
    "error_type",
    "error",
    "itls_s",
)


def csv_row(record: RequestRecord) -> dict[str, Any]:
    """One request as a CSV row; `itls_s` holds every inter-chunk gap, space-separated."""
    outcome = record.outcome
    itls = outcome.itls_s
    return {
        "run": record.level.label,
        "mode": str(record.level.mode),
        "concurrency": record.level.concurrency,
        "rate": record.level.rate,
        "index": record.index,
        "start_s": record.start_s,
        "status": outcome.status,
        "ttft_s": outcome.ttft_s,
        "e2e_s": outcome.e2e_s,
        "tpot_s": outcome.tpot_s,
        "itl_mean_s": sum(itls) / len(itls) if itls else None,
        "itl_max_s": max(itls) if itls else None,
        "output_tokens": outcome.output_tokens,
        "prompt_tokens": outcome.prompt_tokens,
        "chunks": outcome.chunks,
        "finish_reason": outcome.finish_reason,
        "error_type": outcome.error_type,
        "error": outcome.error,
        "itls_s": " ".join(f"{gap:.6f}" for gap in itls),
    }


def write_requests_csv(runs: Sequence[RunResult], path: Path) -> None:
    """Every request of every run, one row each, in run order."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for run in runs:
            writer.writerows(csv_row(record) for record in run.records)


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    """The per-level summaries as a Markdown table (missing values as "-")."""
    lines = [
        "| " + " | ".join(column[0] for column in TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for run in runs:
        cells = [_cell(run[key], form, scale) for _, key, form, scale in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any, form: str, scale: float | None) -> str:
    if value is None:
        return "-"
    return form.format(value * scale if scale is not None else value)


def write_summary_table(summary: dict[str, Any], path: Path) -> None:
    path.write_text(runs_table(summary["runs"]), encoding="utf-8")
