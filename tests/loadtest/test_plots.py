from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import matplotlib.image
from loadtest_samples import failed_record, sample_run

from gorgon_loadtest.plots import (
    CONCURRENCY_SWEEP_FILE,
    LATENCY_CDF_FILE,
    SERVERS_FILE,
    SPECULATIVE_FILE,
    write_plots,
)
from gorgon_loadtest.record import LoadLevel, Mode, RunResult
from gorgon_loadtest.stats import summarize_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 100
    assert width > 100


def plot(runs: list[RunResult], out_dir: Path) -> list[Path]:
    return write_plots(runs, [summarize_run(run) for run in runs], out_dir)


def test_single_run_gets_latency_cdfs_only(tmp_path: Path) -> None:
    written = plot([sample_run(Mode.STANDARD, 4)], tmp_path)
    assert written == [tmp_path / LATENCY_CDF_FILE]
    assert_valid_png(written[0])


def test_sweep_with_both_modes_gets_every_plot(tmp_path: Path) -> None:
    runs = [
        sample_run(mode, concurrency, slowdown=concurrency / 2)
        for concurrency in (1, 2, 4)
        for mode in (Mode.STANDARD, Mode.SPECULATIVE)
    ]
    written = plot(runs, tmp_path)
    assert {path.name for path in written} == {LATENCY_CDF_FILE, CONCURRENCY_SWEEP_FILE, SPECULATIVE_FILE}
    for path in written:
        assert_valid_png(path)


def test_baseline_server_gets_the_servers_plot(tmp_path: Path) -> None:
    runs = []
    for server, modes in (("gorgon", list(Mode)), ("llama.cpp", [Mode.STANDARD])):
        for mode in modes:
            run = sample_run(mode, 2)
            runs.append(
                RunResult(level=replace(run.level, server=server), records=run.records, wall_s=run.wall_s)
            )
    written = plot(runs, tmp_path)
    assert {path.name for path in written} == {LATENCY_CDF_FILE, SPECULATIVE_FILE, SERVERS_FILE}
    for path in written:
        assert_valid_png(path)


def test_runs_where_every_request_failed_still_plot(tmp_path: Path) -> None:
    levels = [LoadLevel(mode=mode, rate=1.0) for mode in Mode]
    runs = [
        RunResult(level=level, records=[failed_record(level, 0, "timeout")], wall_s=1.0) for level in levels
    ]
    written = plot(runs, tmp_path)
    assert {path.name for path in written} == {LATENCY_CDF_FILE, SPECULATIVE_FILE}
    for path in written:
        assert_valid_png(path)
