from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from loadtest_samples import failed_record, ok_record, sample_run

from gorgon_loadtest.record import LoadLevel, Mode, RunResult
from gorgon_loadtest.report import CSV_COLUMNS, runs_table, write_requests_csv, write_summary
from gorgon_loadtest.stats import summarize_all


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_csv_has_one_row_per_request_of_every_run(tmp_path: Path) -> None:
    runs = [sample_run(Mode.STANDARD, 1, requests=3), sample_run(Mode.SPECULATIVE, 1, requests=5)]
    path = tmp_path / "requests.csv"
    write_requests_csv(runs, path)
    rows = read_rows(path)
    assert len(rows) == 8
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["mode"] for row in rows] == ["standard"] * 3 + ["speculative"] * 5
    assert [int(row["index"]) for row in rows[:3]] == [0, 1, 2]


def test_csv_row_keeps_timings_and_the_error(tmp_path: Path) -> None:
    level = LoadLevel(mode=Mode.STANDARD, concurrency=2)
    records = [ok_record(level, 0, ttft=0.5, itls=[0.1, 0.3]), failed_record(level, 1, "http_429")]
    path = tmp_path / "requests.csv"
    write_requests_csv([RunResult(level=level, records=records, wall_s=1.0)], path)
    good, bad = read_rows(path)
    assert float(good["ttft_s"]) == pytest.approx(0.5)
    assert float(good["e2e_s"]) == pytest.approx(0.9)
    assert float(good["itl_max_s"]) == pytest.approx(0.3)
    assert [float(gap) for gap in good["itls_s"].split()] == pytest.approx([0.1, 0.3])
    assert good["output_tokens"] == "3"
    assert good["error_type"] == ""
    assert (bad["error_type"], bad["status"], bad["ttft_s"]) == ("http_429", "429", "")


def test_summary_json_round_trips(tmp_path: Path) -> None:
    summary = summarize_all([sample_run(Mode.STANDARD, 1)])
    path = tmp_path / "summary.json"
    write_summary(summary, path)
    assert json.loads(path.read_text(encoding="utf-8")) == summary


def test_markdown_table_has_a_row_per_run_and_dashes_for_missing_values() -> None:
    level = LoadLevel(mode=Mode.STANDARD, rate=1.0)
    failed = RunResult(level=level, records=[failed_record(level, 0, "timeout")], wall_s=1.0)
    table = runs_table(summarize_all([sample_run(Mode.STANDARD, 1), failed])["runs"])
    header, rule, good, bad = table.splitlines()
    assert header.startswith("| run | requests | errors | TTFT p50 (s)")
    assert rule.count("---") == header.count("|") - 1
    assert good.startswith("| standard-c1 | 10 | 0 | 0.200 | 0.300 | 20.00 | 20.00 |")
    assert bad.startswith("| standard-r1 | 1 | 1 | - |")
