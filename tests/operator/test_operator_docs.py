"""docs/operator.md against the code: the defaults table and the simulation example must not drift."""

from __future__ import annotations

import re
from pathlib import Path

from gorgon.core.defaults import DEFAULT_MODEL_DISPLAY_NAME
from gorgon_operator.policy import ScalingPolicy
from gorgon_operator.simulate import simulate
from gorgon_operator.spec import (
    DEFAULT_CAP_TO_SCHEDULABLE_GPUS,
    DEFAULT_GPU_RESOURCE_NAME,
    DEFAULT_POLL_INTERVAL_S,
    policy_from_spec,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()


def table_rows(first_header: str) -> list[list[str]]:
    """The rows of the Markdown table whose first header cell is `first_header`."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def documented_defaults() -> dict[str, str]:
    return {row[0].strip("`"): row[1].strip("`") for row in table_rows("field") if len(row) == 3}


def test_documented_defaults_are_the_code_defaults() -> None:
    policy = ScalingPolicy()
    expected = {
        "model": DEFAULT_MODEL_DISPLAY_NAME,
        "targetBacklogPerReplica": f"{policy.target_backlog_per_replica}",
        "minReplicas": f"{policy.min_replicas}",
        "maxReplicas": f"{policy.max_replicas}",
        "pollIntervalSeconds": f"{DEFAULT_POLL_INTERVAL_S:g}",
        "scaleToZeroAfterSeconds": f"{policy.scale_to_zero_after_s:g}",
        "startupGraceSeconds": f"{policy.startup_grace_s:g}",
        "gpuResourceName": DEFAULT_GPU_RESOURCE_NAME,
        "capToSchedulableGPUs": str(DEFAULT_CAP_TO_SCHEDULABLE_GPUS).lower(),
        "behavior.tolerance": f"{policy.tolerance:g}",
        "behavior.scaleUp.stabilizationWindowSeconds": f"{policy.scale_up_window_s:g}",
        "behavior.scaleUp.maxStepReplicas": f"{policy.scale_up_max_step_replicas}",
        "behavior.scaleUp.maxStepPercent": f"{policy.scale_up_max_step_percent:g}",
        "behavior.scaleDown.stabilizationWindowSeconds": f"{policy.scale_down_window_s:g}",
        "behavior.scaleDown.maxStepReplicas": "none" if policy.scale_down_max_step_replicas is None else "?",
        "behavior.scaleDown.maxStepPercent": f"{policy.scale_down_max_step_percent:g}",
    }
    documented = documented_defaults()
    assert {field: documented.get(field) for field in expected} == expected


def test_the_simulation_example_is_what_the_policy_does() -> None:
    rows = table_rows("t")
    policy = policy_from_spec(
        {
            "targetBacklogPerReplica": 16,
            "maxReplicas": 8,
            "scaleToZeroAfterSeconds": 120,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
        }
    )
    samples = [{"t": int(row[0]), "backlog": int(row[1]), "ready": int(row[3])} for row in rows]
    lines = list(simulate(policy, samples))
    assert [[int(line["replicas"]), int(line["desired"]), line["reason"]] for line in lines] == [
        [int(row[2]), int(row[4]), row[5]] for row in rows
    ]
    assert re.search(r"targetBacklogPerReplica: 16, maxReplicas: 8, scaleToZeroAfterSeconds: 120", DOC)
