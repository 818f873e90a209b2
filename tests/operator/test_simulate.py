from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gorgon.cli import main


def write_trace(tmp_path: Path, trace: Any) -> Path:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(trace))
    return path


def simulate(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, list[dict[str, Any]], str]:
    status = main(["autoscale", "simulate", "--trace", str(path)])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    return status, lines, captured.err


def test_prints_one_json_line_per_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = [
        {"t": 0, "backlog": 0},
        {"t": 15, "backlog": 50},
        {"t": 30, "backlog": 50},
        {"t": 45, "backlog": 0},
    ]
    path = write_trace(
        tmp_path, {"policy": {"targetBacklogPerReplica": 10, "maxReplicas": 8}, "samples": samples}
    )
    status, lines, _ = simulate(capsys, path)
    assert status == 0
    assert len(lines) == len(samples)
    assert all({"t", "backlog", "desired", "reason"} <= set(line) for line in lines)
    assert [line["desired"] for line in lines] == [0, 4, 5, 5]
    assert [line["backlog"] for line in lines] == [0, 50, 50, 0]
    assert lines[1]["reason"] == "ScaleUpLimited"


def test_ready_in_a_sample_models_slow_starting_pods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = {
        "targetBacklogPerReplica": 10,
        "scaleToZeroAfterSeconds": 0,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
    }
    samples = [{"t": 0, "backlog": 10}, {"t": 15, "backlog": 0, "ready": 0}, {"t": 30, "backlog": 0}]
    _, lines, _ = simulate(capsys, write_trace(tmp_path, {"policy": policy, "samples": samples}))
    assert [line["desired"] for line in lines] == [1, 1, 0]
    assert lines[1]["reason"] == "HoldWhileStarting"


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        ({"samples": [{"t": 0}]}, "needs 't' and 'backlog'"),
        ({"samples": [{"t": 0, "backlog": -1}]}, "'backlog' must be a non-negative number"),
        ({"policy": {"maxReplicas": 0}, "samples": []}, "maxReplicas"),
        ({"policy": {"maxReplica": 3}, "samples": []}, "unknown policy field"),
        ({"samples": "none"}, "list of 'samples'"),
    ],
)
def test_bad_traces_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trace: Any, message: str
) -> None:
    status, lines, err = simulate(capsys, write_trace(tmp_path, trace))
    assert status == 2
    assert lines == []
    assert err.startswith("gorgon: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_missing_and_malformed_files_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = simulate(capsys, tmp_path / "absent.json")
    assert status == 2 and "cannot read trace" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    status, _, err = simulate(capsys, broken)
    assert status == 2 and "not valid JSON" in err
