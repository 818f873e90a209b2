"""`gorgon autoscale simulate --trace FILE`: replay a backlog trace through the scaling policy.

FILE is JSON: {"policy": {WorkerPool spec fields, camelCase}, "replicas": start (default minReplicas),
"samples": [{"t": seconds, "backlog": int, "ready": int (optional), "gpuCapacity": int (optional)}, ...]}.
Replicas become ready as soon as they are asked for unless a sample gives "ready". One JSON line per sample
on stdout: {"t", "backlog", "desired", "reason", "message", "replicas", "ready", "recommendation",
"gpuShortfall"}.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gorgon.core.errors import ConfigurationError
from gorgon_operator.policy import Observation, ScalingPolicy, WindowState, decide
from gorgon_operator.spec import policy_from_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace", required=True, type=Path, help="JSON trace: {policy, samples: [{t, backlog}]}"
    )


def run(args: argparse.Namespace) -> int:
    policy, start, samples = load_trace(args.trace)
    for line in simulate(policy, samples, start_replicas=start):
        sys.stdout.write(json.dumps(line) + "\n")
    return 0


def simulate(
    policy: ScalingPolicy, samples: Sequence[Mapping[str, Any]], *, start_replicas: int | None = None
) -> Iterator[dict[str, Any]]:
    """Feed each sample to the policy; the desired count becomes the next sample's replica count."""
    replicas = policy.min_replicas if start_replicas is None else start_replicas
    state = WindowState()
    for sample in samples:
        ready = min(replicas, int(sample.get("ready", replicas)))
        capacity = sample.get("gpuCapacity")
        obs = Observation(
            t=float(sample["t"]),
            backlog=int(sample["backlog"]),
            current=replicas,
            ready=ready,
            gpu_capacity=None if capacity is None else int(capacity),
        )
        decision = decide(policy, state, obs)
        yield {
            "t": obs.t,
            "backlog": obs.backlog,
            "desired": decision.desired,
            "reason": str(decision.reason),
            "message": decision.message,
            "replicas": replicas,
            "ready": ready,
            "recommendation": decision.recommendation,
            "gpuShortfall": decision.gpu_shortfall,
        }
        state, replicas = decision.state, decision.desired


def load_trace(path: Path) -> tuple[ScalingPolicy, int | None, list[dict[str, Any]]]:
    """Read and check a trace file; every problem becomes a one-line ConfigurationError."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read trace {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"trace {path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("samples"), list):
        raise ConfigurationError(f"trace {path} must be an object with a list of 'samples'")
    try:
        policy = policy_from_spec(document.get("policy") or {}, ignore_unknown=False)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"trace {path}: policy: {exc}") from exc
    samples = [_checked_sample(path, index, sample) for index, sample in enumerate(document["samples"])]
    return policy, _start_replicas(path, document.get("replicas")), samples


def _checked_sample(path: Path, index: int, sample: Any) -> dict[str, Any]:
    if not isinstance(sample, dict) or "t" not in sample or "backlog" not in sample:
        raise ConfigurationError(f"trace {path}: sample {index} needs 't' and 'backlog'")
    for key in ("t", "backlog", "ready", "gpuCapacity"):
        value = sample.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ConfigurationError(f"trace {path}: sample {index}: '{key}' must be a non-negative number")
    return sample


def _start_replicas(path: Path, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"trace {path}: 'replicas' must be a non-negative whole number")
    return value
