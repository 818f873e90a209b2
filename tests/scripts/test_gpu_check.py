"""`scripts/gpu-check.sh` end to end on CPU, scaled down, with a tiny model in Vicuna v1.3's layout and Medusa-1
heads in FasterDecoding's (tests/engine/vicuna_tiny.py): the same phases a GPU runs, one JSON summary on stdout
with every section filled in and every check held."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# vicuna_tiny lives with the engine tests, whose folder pytest puts on sys.path only when it collects them
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from vicuna_tiny import VOCAB, faster_decoding_heads, write_faster_decoding_heads, write_tiny_vicuna

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]
HEADS = 5  # as FasterDecoding's heads for Vicuna-7B
SCALED_DOWN = (
    "--device cpu --dtype float32 --no-deepspeed --concurrency 4 --prompt-tokens 64 --max-tokens 8 "
    "--batch-sizes 1,4 --engine-bench-quick --nodes 1,4 --contexts 64,128 --step-cost-rounds 1"
)


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the script: its exit status and its summary."""
    directory = tmp_path_factory.mktemp("gpu-check")
    write_tiny_vicuna(directory / "model")
    write_faster_decoding_heads(
        faster_decoding_heads(64, VOCAB, HEADS), directory / "heads", "lmsys/vicuna-7b-v1.3"
    )
    command = ["bash", str(ROOT / "scripts" / "gpu-check.sh"), *SCALED_DOWN.split()]
    command += ["--model", str(directory / "model"), "--heads", str(directory / "heads")]
    command += ["--out", str(directory / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"stdout holds one JSON line; stderr ends:\n{result.stderr[-3000:]}"
    return {"exit_status": result.returncode, **json.loads(lines[0])}


def test_every_check_held_and_the_script_says_so(summary: dict[str, Any]) -> None:
    assert summary["checks"] == dict.fromkeys(summary["checks"], True)
    assert summary["passed"] is True and summary["exit_status"] == 0
    assert 0 < summary["seconds"] < 600


def test_the_versions_and_the_load_are_reported(summary: dict[str, Any]) -> None:
    assert summary["versions"]["torch"] and summary["versions"]["cuda_available"] is False
    load = summary["load"]
    assert load["device"] == "cpu" and load["dtype"] == "float32" and load["deepspeed"] is False
    assert load["heads"] == HEADS
    assert 0 < load["model_s"] < load["seconds"]
    assert load["memory_kind"] == "process_peak_rss" and load["peak_memory_bytes"] > 100 * 2**20


def test_the_engine_bench_decodes_identically_in_every_mode_and_batch(summary: dict[str, Any]) -> None:
    bench = summary["engine_bench"]
    assert bench["identical_outputs"] is True
    assert {(result["mode"], result["batch"]) for result in bench["results"]} == {
        (mode, batch) for mode in ("hf_generate", "plain", "medusa") for batch in (1, 4)
    }
    assert all(result["tokens_per_s"] > 0 and result["tokens_per_step"] >= 1 for result in bench["results"])
    medusa = [result for result in bench["results"] if result["mode"] == "medusa"]
    assert any("mc_sim_7b_63" in result["shape_steps"] for result in medusa)


def test_the_step_cost_covers_every_size_at_every_context(summary: dict[str, Any]) -> None:
    step_cost = summary["step_cost"]
    assert step_cost["memory_kind"] == "process_peak_rss"
    points = {(cost["context_tokens"], cost["nodes"]): cost for cost in step_cost["costs"]}
    assert set(points) == {(64, 1), (64, 4), (128, 1), (128, 4)}
    assert all(cost["ms"] > 0 and cost["peak_memory_bytes"] > 0 for cost in points.values())
    assert points[(64, 4)]["tree"] == "spine_4"


def test_serving_under_load_failed_nothing_and_kept_its_worker(summary: dict[str, Any]) -> None:
    serving = summary["serving"]
    assert (serving["requests"], serving["completed"], serving["failed"]) == (4, 4, 0)
    assert serving["worker_restarts"] == 0 and serving["out_of_memory_logged"] is False
    assert len(serving["workers_at_start"]) == 1 and serving["workers_at_end"] == serving["workers_at_start"]
    assert 60 <= serving["prompt_tokens_mean"] <= 70
    assert serving["output_tokens_per_s"] > 0 and serving["up_exit_status"] == 0
    assert Path(serving["log"]).is_file() and (Path(serving["loadtest"]) / "summary.json").is_file()
