"""`gorgon bench gpu-check`'s phases and verdict: the commands it runs, how a phase's report (or failure) lands
in the summary, and the checks over the summary."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

from gorgon.bench.gpu_check_run import (
    GpuCheckConfig,
    _json_phase,
    engine_bench_command,
    engine_bench_section,
    evaluate_checks,
    load_sections,
    step_cost_command,
)
from gorgon.engine.config import EngineSettings


def config(tmp_path: Path, **changes: Any) -> GpuCheckConfig:
    values: dict[str, Any] = {
        "model": "lmsys/vicuna-7b-v1.3",
        "heads": "FasterDecoding/medusa-vicuna-7b-v1.3",
        "device": "cuda",
        "dtype": "float16",
        "deepspeed": True,
        "medusa_choices": "mc_sim_7b_63",
        "batch_sizes": (1, 4, 16),
        "engine_bench_quick": False,
        "max_tokens": 128,
        "nodes": (1, 4, 16, 64),
        "contexts": (256, 1900),
        "step_cost_rounds": 3,
        "concurrency": 48,
        "prompt_tokens": 1500,
        "budget_s": 600.0,
        "out": tmp_path,
    }
    return GpuCheckConfig(**(values | changes))


def test_the_benches_run_with_the_checks_model_device_and_figures(tmp_path: Path) -> None:
    engine = engine_bench_command(config(tmp_path))
    assert engine[:5] == [sys.executable, "-m", "gorgon.cli", "bench", "engine"]
    words = " ".join(engine[3:])
    assert "--model lmsys/vicuna-7b-v1.3 --heads FasterDecoding/medusa-vicuna-7b-v1.3" in words
    assert "--device cuda --dtype float16 --medusa-choices mc_sim_7b_63 --batch-sizes 1,4,16" in words
    assert "--max-new-tokens 128 --json" in words and "--quick" not in words
    step_cost = " ".join(step_cost_command(config(tmp_path, deepspeed=False, model=None, heads=None))[3:])
    assert step_cost == (
        "bench step-cost --device cuda --dtype float16 --no-deepspeed --nodes 1,4,16,64 --contexts 256,1900 "
        "--rounds 3 --json"
    )
    assert engine_bench_command(config(tmp_path, engine_bench_quick=True))[-1] == "--quick"


def test_the_served_worker_gets_the_same_engine_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = config(tmp_path, device="cpu", dtype="float32", deepspeed=False).engine_env
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = EngineSettings()
    assert (settings.device, settings.dtype, settings.use_deepspeed) == ("cpu", "float32", False)
    assert settings.medusa_choices == "mc_sim_7b_63"


@pytest.mark.processes
def test_a_phase_reports_its_json_and_its_seconds() -> None:
    report = _json_phase("echo", [sys.executable, "-c", "print('progress'); print('{\"x\": 1}')"], 60)
    assert report["x"] == 1 and report["seconds"] > 0


@pytest.mark.processes
@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("import sys; sys.exit(3)", "exited with status 3"),
        ("print('no report')", "printed no JSON report"),
        ("import time; time.sleep(30)", "did not finish within 1 s"),
    ],
)
def test_a_phase_that_fails_reports_why(code: str, error: str) -> None:
    report = _json_phase("failing", [sys.executable, "-c", code], 1)
    assert error in report["error"] and report["seconds"] < 20


def test_the_load_phase_splits_into_versions_and_load() -> None:
    report = {"versions": {"torch": "2.13.0"}, "load": {"seconds": 2.0}, "prompts": "p.jsonl", "seconds": 9.0}
    assert load_sections(report) == ({"torch": "2.13.0"}, {"seconds": 2.0, "prompts": "p.jsonl"})
    assert load_sections({"error": "exited with status 1", "seconds": 1.0}) == (
        None,
        {"error": "exited with status 1", "seconds": 1.0},
    )


def bench_result(mode: str, batch: int, identical: bool | None = None, tokens_per_s: float = 10.0) -> dict:
    return {"mode": mode, "batch": batch, "tokens_per_s": tokens_per_s, "identical_to_plain": identical}


def test_outputs_are_identical_only_if_medusa_matched_plain_at_every_batch_size() -> None:
    results = [bench_result("plain", 1), bench_result("medusa", 1, True), bench_result("medusa", 4, True)]
    assert engine_bench_section({"results": results})["identical_outputs"] is True
    results.append(bench_result("medusa", 16, False))
    assert engine_bench_section({"results": results})["identical_outputs"] is False
    assert engine_bench_section({"error": "exited with status 1"})["identical_outputs"] is False


def passing_summary() -> dict[str, Any]:
    return {
        "load": {"seconds": 60.0},
        "engine_bench": engine_bench_section(
            {"results": [bench_result("plain", 1), bench_result("medusa", 1, True)]}
        ),
        "step_cost": {"costs": []},
        "serving": {
            "requests": 48,
            "completed": 48,
            "failed": 0,
            "worker_restarts": 0,
            "out_of_memory_logged": False,
            "up_exit_status": 0,
        },
        "seconds": 540.0,
    }


def test_a_clean_run_passes_every_check() -> None:
    checks = evaluate_checks(passing_summary(), budget_s=600)
    assert checks and all(checks.values())


@pytest.mark.parametrize(
    ("section", "key", "value", "failed_check"),
    [
        ("step_cost", "error", "exited with status 1", "every_phase_ran"),
        ("serving", "failed", 2, "no_failed_requests"),
        ("serving", "completed", 46, "no_failed_requests"),
        ("serving", "worker_restarts", 1, "no_worker_restart"),
        ("serving", "out_of_memory_logged", True, "no_out_of_memory"),
        ("serving", "up_exit_status", -9, "stopped_cleanly"),
        ("engine_bench", "identical_outputs", False, "identical_outputs"),
    ],
)
def test_each_fault_fails_its_own_check(section: str, key: str, value: object, failed_check: str) -> None:
    summary = copy.deepcopy(passing_summary())
    summary[section][key] = value
    checks = evaluate_checks(summary, budget_s=600)
    assert [name for name, held in checks.items() if not held] == [failed_check]


def test_a_serving_phase_that_never_ran_fails_its_checks() -> None:
    summary = passing_summary() | {"serving": {"error": "gorgon up did not become ready", "seconds": 9.0}}
    checks = evaluate_checks(summary, budget_s=600)
    assert not checks["every_phase_ran"] and not checks["no_failed_requests"]
    assert not checks["no_worker_restart"] and not checks["no_out_of_memory"]


def test_too_slow_a_run_or_a_zero_speed_fails() -> None:
    assert not evaluate_checks(passing_summary() | {"seconds": 601.0}, budget_s=600)["within_budget"]
    summary = passing_summary()
    summary["engine_bench"]["results"][0]["tokens_per_s"] = 0.0
    assert not evaluate_checks(summary, budget_s=600)["tokens_per_s_positive"]
