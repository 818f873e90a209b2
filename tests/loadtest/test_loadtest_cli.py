from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import matplotlib.image
import pytest
from loadtest_server import SseServer

from gorgon.cli import main
from gorgon_loadtest.cli import parse_sweep

pytestmark = pytest.mark.processes

SUMMARY_FIELDS = (
    "requests",
    "errors",
    "ttft_p50_s",
    "ttft_p99_s",
    "itl_p50_s",
    "e2e_p50_s",
    "e2e_p99_s",
    "output_tokens_per_s",
    "requests_per_s",
)


def loadtest(*args: str) -> int:
    return main(["loadtest", "--no-progress", *args])


def test_sweep_compare_writes_summary_csv_and_plots(
    sse_server: SseServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    status = loadtest(
        "--url", sse_server.url, "--out", str(out), "--sweep", "1,2", "--compare-speculative",
        "--requests", "6", "--max-tokens", "10",
    )  # fmt: skip
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    for field in SUMMARY_FIELDS:
        assert field in summary
    assert (summary["requests"], summary["errors"], summary["output_tokens"]) == (24, 0, 240)
    assert [run["label"] for run in summary["runs"]] == [
        "standard-c1", "speculative-c1", "standard-c2", "speculative-c2",
    ]  # fmt: skip
    assert [row["concurrency"] for row in summary["comparison"]] == [1, 2]
    with (out / "requests.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24
    assert {row["output_tokens"] for row in rows} == {"10"}
    for name in ("latency_cdf.png", "concurrency_sweep.png", "speculative_vs_standard.png"):
        assert matplotlib.image.imread(out / name).shape[0] > 100
    assert len((out / "summary.md").read_text().splitlines()) == 2 + 4
    printed = capsys.readouterr().out
    assert "speculative-c2" in printed
    assert f"wrote {out / 'summary.json'}" in printed


def test_baseline_server_runs_interleaved_and_is_compared(
    sse_server: SseServer, baseline_sse_server: SseServer, tmp_path: Path
) -> None:
    status = loadtest(
        "--url", sse_server.url, "--baseline-url", baseline_sse_server.url, "--baseline-name", "seed",
        "--out", str(tmp_path), "--sweep", "1,2", "--requests", "3", "--max-tokens", "5",
    )  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    labels = [run["label"] for run in summary["runs"]]
    assert labels == ["gorgon/standard-c1", "seed/standard-c1", "gorgon/standard-c2", "seed/standard-c2"]
    assert [row["concurrency"] for row in summary["server_comparison"]] == [1, 2]
    assert summary["servers"] == {
        "gorgon": sse_server.url + "/v1/completions",
        "seed": baseline_sse_server.url + "/v1/completions",
    }
    assert matplotlib.image.imread(tmp_path / "servers_side_by_side.png").shape[0] > 100


def test_open_loop_run(sse_server: SseServer, tmp_path: Path) -> None:
    status = loadtest(
        "--url", sse_server.url + "/v1", "--out", str(tmp_path), "--rate", "50", "--requests", "5",
        "--endpoint", "chat", "--prompts", "long",
    )  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runs"][0]["rate"] == 50.0
    assert summary["completed"] == 5


def test_all_requests_failing_exits_nonzero(sse_server: SseServer, tmp_path: Path) -> None:
    prompts = tmp_path / "limited.jsonl"
    prompts.write_text('{"prompt": "http-429"}\n')
    status = loadtest(
        "--url", sse_server.url, "--out", str(tmp_path), "--requests", "2", "--prompts", str(prompts)
    )
    assert status == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["error_types"] == {"http_429": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://example.com:8000"], "--allow-remote"),
        (["--url", "http://127.0.0.1:1", "--sweep", "1,x"], "--sweep"),
        (["--url", "http://127.0.0.1:1", "--sweep", "1,2", "--rate", "3"], "cannot go with --rate"),
        (["--url", "http://127.0.0.1:1", "--concurrency", "0"], "--concurrency must be positive"),
        (["--url", "http://127.0.0.1:1", "--speculative", "--compare-speculative"], "give one"),
        (["--url", "http://127.0.0.1:1", "--prompts", "nope"], "--prompts"),
        (["--url", "http://127.0.0.1:1", "--baseline-url", "http://10.1.1.1"], "--allow-remote"),
        (
            ["--url", "http://127.0.0.1:1", "--baseline-url", "http://[::1]:2", "--name", "baseline"],
            "different",
        ),
    ],
)
def test_bad_arguments_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert loadtest(*args, "--out", str(tmp_path)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gorgon: error:")
    assert message in error
    assert "\n" not in error


def test_out_must_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    assert loadtest("--url", "http://127.0.0.1:1", "--out", str(not_a_directory)) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_unreachable_server_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert loadtest("--url", f"http://127.0.0.1:{port}", "--out", str(tmp_path)) == 2
    assert "cannot reach http://127.0.0.1:" in capsys.readouterr().err


def test_sweep_parsing_keeps_order_and_drops_repeats() -> None:
    assert parse_sweep("1,2,4,2, 8,") == [1, 2, 4, 8]


def test_against_the_echo_stack_summary_csv_and_plots_are_right(echo_stack: str, tmp_path: Path) -> None:
    max_tokens, requests_per_level = 16, 12
    status = loadtest(
        "--url", echo_stack, "--out", str(tmp_path), "--sweep", "1,4", "--compare-speculative",
        "--requests", str(requests_per_level), "--max-tokens", str(max_tokens), "--duration", "20",
    )  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    total = 4 * requests_per_level
    assert (summary["requests"], summary["completed"], summary["errors"]) == (total, total, 0)
    assert summary["output_tokens"] == total * max_tokens
    for field in SUMMARY_FIELDS:
        assert summary[field] is not None and summary[field] >= 0, field
    assert 0 < summary["ttft_p50_s"] <= summary["e2e_p50_s"]
    assert summary["ttft_p99_s"] <= summary["e2e_p99_s"]
    assert 0 < summary["itl_p50_s"] < summary["e2e_p50_s"]
    expected_rate = summary["output_tokens"] / summary["duration_s"]
    assert summary["output_tokens_per_s"] == pytest.approx(expected_rate)
    assert 0 < summary["client_cpu_s"] < summary["duration_s"] * os.cpu_count()
    with (tmp_path / "requests.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == total
    for row in rows:
        assert (row["status"], row["error_type"], row["finish_reason"]) == ("200", "", "length")
        assert int(row["output_tokens"]) == max_tokens
        assert int(row["prompt_tokens"]) > 0
        assert 0 < float(row["ttft_s"]) <= float(row["e2e_s"])
        assert all(float(gap) >= 0 for gap in row["itls_s"].split())
    standard_chunks = {int(row["chunks"]) for row in rows if row["mode"] == "standard"}
    speculative_chunks = {int(row["chunks"]) for row in rows if row["mode"] == "speculative"}
    assert max(speculative_chunks) < min(standard_chunks), "speculative chunks should carry several tokens"
    for name in ("latency_cdf.png", "concurrency_sweep.png", "speculative_vs_standard.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(tmp_path / name).shape[0] > 100


def test_against_the_echo_stack_open_loop_chat(echo_stack: str, tmp_path: Path) -> None:
    status = loadtest(
        "--url", echo_stack, "--out", str(tmp_path), "--endpoint", "chat", "--rate", "20",
        "--requests", "10", "--max-tokens", "8", "--speculative",
    )  # fmt: skip
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["completed"], summary["output_tokens"]) == (10, 80)
    assert summary["runs"][0]["label"] == "speculative-r20"
