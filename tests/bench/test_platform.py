"""`gorgon bench platform`: the Markdown table and the --output JSON keep their format (docs and other tools
read them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gorgon.bench import platform_run
from gorgon.bench.platform_run import Figures
from gorgon.cli import main

RESULTS = {
    "throughput": Figures(12000, 0, 10.0, 20.0, 40.0),
    "cpu_ms_per_request": {"api": 0.5, "worker": 0.25, "redis": 0.1, "load_generator": 0.05},
    "http_ceiling": Figures(40000, 0, 10.0, 5.0, 9.0),
    "redis_round_trip": Figures(3000, 0, 3.0, 0.1, 0.3),
    "latency": Figures(1000, 1, 10.0, 3.0, 6.0),
    "load_generator_lag": Figures(1000, 0, 10.0, 0.2, 1.5),
    "engine_in_process": Figures(1000, 0, 0.5, 0.4, 0.6),
    "sse_delivery": Figures(3200, 0, 10.0, 0.8, 1.9),
}


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform_run, "measure_platform", lambda args: RESULTS)


@pytest.mark.usefixtures("measured")
def test_the_table_has_its_rows_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "platform"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[:3] == [
        "| measurement | figure | target |",
        "|---|---|---|",
        "| API throughput, non-streaming, 32 connections, 16 tokens | 1200 req/s (0 errors) | ≥ 1000 req/s |",
    ]
    assert [row.split(" | ")[0] for row in rows[3:]] == [
        "| HTTP ceiling: constant FastAPI route, plain uvicorn, same client",
        "| platform throughput / HTTP ceiling",
        "| CPU per request: API / worker / Redis / load generator",
        "| one API process's capacity on a core of its own (1000 / API CPU ms)",
        "| Redis round trip (PING), p50 / p99",
        "| end-to-end latency at 100 req/s, p50 / p99",
        "| load generator's lateness behind its schedule (not counted above), p50 / p99",
        "| same request on the engine in-process, p50 / p99",
        "| added latency (end-to-end percentile − in-process p50), p50 / p99",
        "| SSE chunk delivery (worker publish → client), p50 / p99, 20 streams/s",
    ]
    assert "| 0.30 |" in rows[4]
    assert "2.60 / 5.60 ms | ≤ 2 / ≤ 5 ms |" in rows[11]


@pytest.mark.usefixtures("measured")
def test_the_json_file_holds_every_measurement_field_by_field(tmp_path: Path) -> None:
    output = tmp_path / "platform.json"
    assert main(["bench", "platform", "--output", str(output)]) == 0
    saved = json.loads(output.read_text())
    assert list(saved) == list(RESULTS)
    assert saved["throughput"] == {
        "requests": 12000,
        "errors": 0,
        "seconds": 10.0,
        "p50_ms": 20.0,
        "p99_ms": 40.0,
    }
    assert saved["cpu_ms_per_request"] == RESULTS["cpu_ms_per_request"]
    assert output.read_text().startswith('{\n  "throughput": {\n    "requests": 12000,')
