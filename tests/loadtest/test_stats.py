from __future__ import annotations

from dataclasses import replace

import pytest
from loadtest_samples import failed_record, ok_record, sample_run

from gorgon_loadtest.record import LoadLevel, Mode, RunResult
from gorgon_loadtest.stats import percentile, summarize, summarize_all

STANDARD_C1 = LoadLevel(mode=Mode.STANDARD, concurrency=1)


def test_percentile_interpolates_linearly_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)


def test_percentile_of_one_value_is_that_value_and_of_none_is_none() -> None:
    assert percentile([0.25], 99) == 0.25
    assert percentile([], 50) is None


def test_summary_counts_tokens_and_computes_rates() -> None:
    records = [ok_record(STANDARD_C1, i, ttft=0.1, itls=[0.01, 0.03], tokens=3) for i in range(4)]
    summary = summarize(records, wall_s=2.0)
    assert summary["requests"] == 4
    assert summary["completed"] == 4
    assert summary["errors"] == 0
    assert summary["output_tokens"] == 12
    assert summary["output_tokens_per_s"] == pytest.approx(6.0)
    assert summary["requests_per_s"] == pytest.approx(2.0)
    assert summary["ttft_p50_s"] == pytest.approx(0.1)
    assert summary["e2e_p99_s"] == pytest.approx(0.14)
    assert summary["itl_p50_s"] == pytest.approx(0.02)
    assert summary["tpot_p50_s"] == pytest.approx(0.02)


def test_errors_are_counted_by_type_and_left_out_of_latencies_and_throughput() -> None:
    records = [
        ok_record(STANDARD_C1, 0, ttft=0.2, itls=[0.05]),
        failed_record(STANDARD_C1, 1, "http_429"),
        failed_record(STANDARD_C1, 2, "http_429"),
        failed_record(STANDARD_C1, 3, "timeout"),
    ]
    summary = summarize(records, wall_s=1.0)
    assert summary["requests"] == 4
    assert summary["errors"] == 3
    assert summary["error_types"] == {"http_429": 2, "timeout": 1}
    assert summary["e2e_p50_s"] == pytest.approx(0.25)
    assert summary["output_tokens"] == 2
    assert summary["requests_per_s"] == pytest.approx(1.0)


def test_all_failed_gives_null_latencies_not_zeros() -> None:
    summary = summarize([failed_record(STANDARD_C1, 0, "connect_error")], wall_s=1.0)
    assert summary["ttft_p50_s"] is None
    assert summary["e2e_p99_s"] is None
    assert summary["output_tokens_per_s"] == 0.0


def test_pooled_summary_adds_wall_times_and_lists_each_run() -> None:
    runs = [sample_run(Mode.STANDARD, 1), sample_run(Mode.STANDARD, 4, slowdown=2.0)]
    runs = [replace(run, client_cpu_s=1.5) for run in runs]
    summary = summarize_all(runs)
    assert summary["requests"] == 20
    assert summary["duration_s"] == pytest.approx(6.0)
    assert summary["client_cpu_s"] == pytest.approx(3.0)
    assert summary["client_cpu_cores"] == pytest.approx(0.5)
    assert summary["runs"][0]["client_cpu_cores"] == pytest.approx(0.75)
    assert [run["label"] for run in summary["runs"]] == ["standard-c1", "standard-c4"]
    assert [run["concurrency"] for run in summary["runs"]] == [1, 4]
    assert summary["comparison"] == []


def test_comparison_gives_speculative_over_standard_ratios_per_level() -> None:
    runs = [
        sample_run(Mode.STANDARD, 2, slowdown=2.0),
        sample_run(Mode.SPECULATIVE, 2),
        sample_run(Mode.STANDARD, 8),
    ]
    (row,) = summarize_all(runs)["comparison"]
    assert row["concurrency"] == 2
    assert row["output_tokens_per_s_ratio"] == pytest.approx(2.0)
    assert row["e2e_p50_s_ratio"] == pytest.approx(0.5)


def test_server_comparison_divides_the_server_under_test_by_the_baseline() -> None:
    ours = sample_run(Mode.STANDARD, 4)
    theirs = sample_run(Mode.STANDARD, 4, slowdown=4.0)
    ours = RunResult(level=replace(ours.level, server="gorgon"), records=ours.records, wall_s=ours.wall_s)
    theirs = RunResult(
        level=replace(theirs.level, server="llama.cpp"), records=theirs.records, wall_s=theirs.wall_s
    )
    summary = summarize_all([ours, theirs])
    (row,) = summary["server_comparison"]
    assert (row["server"], row["baseline"], row["mode"], row["concurrency"]) == (
        "gorgon",
        "llama.cpp",
        "standard",
        4,
    )
    assert row["output_tokens_per_s_ratio"] == pytest.approx(4.0)
    assert row["ttft_p50_s_ratio"] == pytest.approx(0.25)
    assert summary["comparison"] == []


def test_server_comparison_has_a_row_per_mode_of_the_server_under_test() -> None:
    runs = [
        replace(sample_run(Mode.STANDARD, 1), level=LoadLevel(Mode.STANDARD, 1, server="gorgon")),
        replace(sample_run(Mode.SPECULATIVE, 1), level=LoadLevel(Mode.SPECULATIVE, 1, server="gorgon")),
        replace(sample_run(Mode.STANDARD, 1, slowdown=2.0), level=LoadLevel(Mode.STANDARD, 1, server="seed")),
    ]
    rows = summarize_all(runs)["server_comparison"]
    assert [(row["mode"], row["baseline"]) for row in rows] == [("standard", "seed"), ("speculative", "seed")]
    assert rows[0]["output_tokens_per_s_ratio"] == pytest.approx(2.0)


def test_open_loop_levels_are_labelled_by_rate() -> None:
    level = LoadLevel(mode=Mode.SPECULATIVE, rate=2.5)
    run = RunResult(level=level, records=[ok_record(level, 0, ttft=0.1, itls=[])], wall_s=1.0)
    (row,) = summarize_all([run])["runs"]
    assert (row["label"], row["rate"], row["concurrency"]) == ("speculative-r2.5", 2.5, None)
    assert row["tpot_p50_s"] is None
