"""What `gorgon bench gpu-check` runs (gpu_check.py holds its flags): four phases, each in processes of its own
so that the GPU memory one held is free for the next, then the checks over their reports.

A phase that fails leaves an `error` in its section and the others still run: one pass over a GPU shows all it
can. Every phase is stopped after the budget; the check passes only if all of it ran within the budget.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gorgon.bench.gpu_check_serve import ServingLoad, run_serving_check
from gorgon.core.errors import GorgonError
from gorgon.engine.config import EngineSettings
from gorgon.local.settings_table import env_names

log = logging.getLogger(__name__)

PROMPTS_FILE = "prompts.jsonl"
SECTIONS = ("load", "engine_bench", "step_cost", "serving")


@dataclass(frozen=True, slots=True)
class GpuCheckConfig:
    """The check's flags, checked."""

    model: str | None
    heads: str | None
    device: str
    dtype: str
    deepspeed: bool
    medusa_choices: str
    batch_sizes: tuple[int, ...]
    engine_bench_quick: bool
    max_tokens: int
    nodes: tuple[int, ...]
    contexts: tuple[int, ...]
    step_cost_rounds: int
    concurrency: int
    prompt_tokens: int
    budget_s: float
    out: Path

    @property
    def model_flags(self) -> list[str]:
        return [
            *(["--model", self.model] if self.model else []),
            *(["--heads", self.heads] if self.heads else []),
        ]

    @property
    def device_flags(self) -> list[str]:
        return [
            "--device",
            self.device,
            "--dtype",
            self.dtype,
            *([] if self.deepspeed else ["--no-deepspeed"]),
        ]

    @property
    def engine_env(self) -> dict[str, str]:
        """The same engine settings for the worker `gorgon up` starts, as the variables that set them."""
        values = {
            "device": self.device,
            "dtype": self.dtype,
            "use_deepspeed": str(self.deepspeed).lower(),
            "medusa_choices": self.medusa_choices,
        }
        return {
            env_names(EngineSettings, name, EngineSettings.model_fields[name])[0]: value
            for name, value in values.items()
        }


def gorgon_command(*words: str) -> list[str]:
    return [sys.executable, "-m", "gorgon.cli", *words]


def run_gpu_check(config: GpuCheckConfig) -> dict[str, Any]:
    """Every phase in turn, then the checks; the summary the command prints."""
    started = time.monotonic()
    config.out.mkdir(parents=True, exist_ok=True)
    versions, load = load_sections(_json_phase("load", load_command(config), config.budget_s))
    summary: dict[str, Any] = {
        "model": config.model,
        "heads": config.heads,
        "versions": versions,
        "load": load,
        "engine_bench": engine_bench_section(
            _json_phase("engine bench", engine_bench_command(config), config.budget_s)
        ),
        "step_cost": _json_phase("step cost", step_cost_command(config), config.budget_s),
        "serving": _timed("serving", lambda: _serve(config)),
    }
    summary["seconds"] = time.monotonic() - started
    summary["checks"] = evaluate_checks(summary, config.budget_s)
    summary["passed"] = all(summary["checks"].values())
    summary["out"] = str(config.out)
    return summary


def load_command(config: GpuCheckConfig) -> list[str]:
    return [
        *(sys.executable, "-m", "gorgon.bench.gpu_check_load", *config.model_flags, *config.device_flags),
        *("--medusa-choices", config.medusa_choices, "--prompts-out", str(config.out / PROMPTS_FILE)),
        *("--prompt-tokens", str(config.prompt_tokens), "--prompt-count", str(config.concurrency)),
    ]


def load_sections(report: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The load phase's report as the summary's `versions` and `load` (with the prompts file it wrote)."""
    if "error" in report:
        return None, report
    return report["versions"], report["load"] | {"prompts": report["prompts"]}


def engine_bench_command(config: GpuCheckConfig) -> list[str]:
    return gorgon_command(
        *("bench", "engine", *config.model_flags, *config.device_flags),
        *("--medusa-choices", config.medusa_choices, "--batch-sizes", _listed(config.batch_sizes)),
        *("--max-new-tokens", str(config.max_tokens), "--json"),
        *(["--quick"] if config.engine_bench_quick else []),
    )


def step_cost_command(config: GpuCheckConfig) -> list[str]:
    return gorgon_command(
        *("bench", "step-cost", *config.model_flags, *config.device_flags),
        *("--nodes", _listed(config.nodes), "--contexts", _listed(config.contexts)),
        *("--rounds", str(config.step_cost_rounds), "--json"),
    )


def _listed(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def _serve(config: GpuCheckConfig) -> dict[str, Any]:
    prompts = config.out / PROMPTS_FILE
    if not prompts.is_file():
        raise GorgonError("no prompts to send: the load phase, which writes them, failed")
    load = ServingLoad(config.concurrency, config.max_tokens, prompts, config.budget_s)
    return run_serving_check(config.model_flags, config.engine_env, load, config.out)


def _json_phase(name: str, command: list[str], timeout_s: float) -> dict[str, Any]:
    """A command that prints one JSON object on stdout (its progress going to stderr): that object."""

    def run() -> dict[str, Any]:
        log.info("%s: %s", name, shlex.join(command))
        try:
            result = subprocess.run(
                command, stdout=subprocess.PIPE, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise GorgonError(f"did not finish within {timeout_s:.0f} s") from exc
        if result.returncode != 0:
            raise GorgonError(f"exited with status {result.returncode} (its log is above on stderr)")
        lines = result.stdout.strip().splitlines()
        try:
            report: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise GorgonError(f"printed no JSON report: {result.stdout[-200:]!r}") from exc
        return report

    return _timed(name, run)


def _timed(name: str, phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A phase's report with the seconds it took; a phase that fails reports its error instead."""
    started = time.monotonic()
    try:
        report = phase()
    except GorgonError as exc:
        log.error("%s failed: %s", name, exc)
        report = {"error": str(exc)}
    seconds = time.monotonic() - started
    log.info("%s: %.1f s", name, seconds)
    return report | {"seconds": seconds}


def engine_bench_section(report: dict[str, Any]) -> dict[str, Any]:
    """The engine bench's report with the verdict on top: did Medusa decode exactly what plain decoding did, at
    every batch size."""
    medusa = [result for result in report.get("results", []) if result["mode"] == "medusa"]
    identical = bool(medusa) and all(result["identical_to_plain"] for result in medusa)
    return {"identical_outputs": identical} | report


def evaluate_checks(summary: dict[str, Any], budget_s: float) -> dict[str, bool]:
    """What must hold for the GPU to serve: each check by name."""
    serving = summary["serving"]
    bench_results = summary["engine_bench"].get("results", [])
    return {
        "every_phase_ran": not any("error" in summary[section] for section in SECTIONS),
        "identical_outputs": summary["engine_bench"]["identical_outputs"],
        "tokens_per_s_positive": bool(bench_results)
        and all(result["tokens_per_s"] > 0 for result in bench_results),
        "no_failed_requests": serving.get("failed") == 0
        and serving.get("requests", 0) > 0
        and serving.get("completed") == serving.get("requests"),
        "no_worker_restart": serving.get("worker_restarts") == 0,
        "no_out_of_memory": serving.get("out_of_memory_logged") is False,
        "stopped_cleanly": serving.get("up_exit_status") == 0,
        "within_budget": summary["seconds"] <= budget_s,
    }
