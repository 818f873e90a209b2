"""The scaling policy: a pure function from (policy, window state, observation) to a decision.

It follows the Kubernetes HPA (replica calculator + default `behavior`), applied to a queue:

1. recommendation = ceil(backlog / target per replica), kept at the current replica count while the usage
   ratio backlog / (target × current) is within the tolerance (10 %);
2. scale to zero only after the pool was idle (no backlog) for the idle period; any backlog means ≥ 1;
3. clamp to [min, max];
4. stabilization: scale up to the lowest recommendation of the scale-up window (0 s: at once), scale down only
   to the highest recommendation of the scale-down window (300 s);
5. rate limits: up by at most max(+4, +100 %) per step, down by the scale-down limits;
6. pods still starting count as capacity (the current count includes them, so slow GPU pods cause no
   overshoot) and are never removed as idle: no scale-down while any pod is starting (a Deployment scale-down
   deletes not-ready pods first — the pods still waiting for a GPU node, kserve#1247), for at most the startup
   grace period (a pod that never becomes ready must not pin the pool forever);
7. cap by the replicas the cluster's GPUs can hold; the rest is reported as a shortfall.

The window state (recent recommendations, last busy time) is returned in every decision and is persisted by
the caller (the WorkerPool status), so a restart changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from gorgon.core.defaults import DEFAULT_MAX_BATCH_SIZE

# A worker decodes up to max_batch_size requests at once: that much backlog per worker keeps each one busy.
DEFAULT_TARGET_BACKLOG_PER_REPLICA = DEFAULT_MAX_BATCH_SIZE


class Reason(StrEnum):
    """Why the desired replica count is what it is (the main cause; `Decision.message` has the numbers)."""

    STEADY = "Steady"
    WITHIN_TOLERANCE = "WithinTolerance"
    SCALE_UP = "ScaleUp"
    SCALE_UP_LIMITED = "ScaleUpLimited"
    SCALE_DOWN = "ScaleDown"
    SCALE_DOWN_LIMITED = "ScaleDownLimited"
    STABILIZING = "Stabilizing"
    IDLE_TO_ZERO = "IdleToZero"
    WAKE_UP = "WakeUp"
    HOLD_STARTING = "HoldWhileStarting"
    MAX_REPLICAS = "MaxReplicas"
    MIN_REPLICAS = "MinReplicas"
    GPU_CAPPED = "GPUCapped"


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """Every tunable of the policy, with its default (the single source of truth of these defaults)."""

    target_backlog_per_replica: int = DEFAULT_TARGET_BACKLOG_PER_REPLICA
    min_replicas: int = 0
    max_replicas: int = 4
    tolerance: float = 0.1
    scale_to_zero_after_s: float = 300.0
    scale_up_window_s: float = 0.0
    scale_up_max_step_replicas: int = 4
    scale_up_max_step_percent: float = 100.0
    scale_down_window_s: float = 300.0
    scale_down_max_step_replicas: int | None = None
    scale_down_max_step_percent: float = 100.0
    startup_grace_s: float = 1800.0  # the chart's worker startup probe allows 30 min

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        checks = [
            (self.target_backlog_per_replica >= 1, "targetBacklogPerReplica must be at least 1"),
            (self.min_replicas >= 0, "minReplicas must not be negative"),
            (
                self.max_replicas >= max(1, self.min_replicas),
                "maxReplicas must be at least 1 and ≥ minReplicas",
            ),
            (0 <= self.tolerance < 1, "tolerance must be in [0, 1)"),
            (self.scale_to_zero_after_s >= 0, "scaleToZeroAfterSeconds must not be negative"),
            (self.scale_up_window_s >= 0, "scaleUp.stabilizationWindowSeconds must not be negative"),
            (self.scale_down_window_s >= 0, "scaleDown.stabilizationWindowSeconds must not be negative"),
            (self.scale_up_max_step_replicas >= 1, "scaleUp.maxStepReplicas must be at least 1"),
            (self.scale_up_max_step_percent > 0, "scaleUp.maxStepPercent must be positive"),
            (
                self.scale_down_max_step_replicas is None or self.scale_down_max_step_replicas >= 1,
                "scaleDown.maxStepReplicas must be at least 1",
            ),
            (0 < self.scale_down_max_step_percent <= 100, "scaleDown.maxStepPercent must be in (0, 100]"),
            (self.startup_grace_s >= 0, "startupGraceSeconds must not be negative"),
        ]
        return [message for ok, message in checks if not ok]

    @property
    def longest_window_s(self) -> float:
        return max(self.scale_up_window_s, self.scale_down_window_s)


@dataclass(frozen=True, slots=True)
class Recommendation:
    t: float
    replicas: int


@dataclass(frozen=True, slots=True)
class WindowState:
    """What the policy remembers between decisions; persisted in the WorkerPool status."""

    recommendations: tuple[Recommendation, ...] = ()
    last_busy_t: float | None = None
    starting_since_t: float | None = None  # since when some replica has been starting without a break

    def to_status(self) -> dict[str, Any]:
        return {
            "recommendations": [{"time": rec.t, "replicas": rec.replicas} for rec in self.recommendations],
            "lastBusyTime": self.last_busy_t,
            "startingSince": self.starting_since_t,
        }

    @classmethod
    def from_status(cls, window: Mapping[str, Any] | None) -> WindowState:
        if not window:
            return cls()
        recommendations = tuple(
            Recommendation(float(rec["time"]), int(rec["replicas"]))
            for rec in window.get("recommendations") or ()
        )
        last_busy, starting_since = window.get("lastBusyTime"), window.get("startingSince")
        return cls(
            recommendations,
            None if last_busy is None else float(last_busy),
            None if starting_since is None else float(starting_since),
        )


@dataclass(frozen=True, slots=True)
class Observation:
    """The measured state at time `t` (seconds, any fixed origin)."""

    t: float
    backlog: int
    current: int  # replicas asked for now (spec.replicas): ready + starting
    ready: int
    gpu_capacity: int | None = None  # replicas the cluster's GPUs can hold in total; None = no cap

    @property
    def starting(self) -> int:
        return max(0, self.current - self.ready)


class Verdict(NamedTuple):
    """A replica count on its way through the steps, with the reason it has now."""

    desired: int
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    reason: Reason
    message: str
    recommendation: int  # before stabilization, limits and the GPU cap
    gpu_shortfall: int = 0
    state: WindowState = field(default_factory=WindowState)


def decide(policy: ScalingPolicy, state: WindowState, obs: Observation) -> Decision:
    """The replica count to ask for now, why, and the window state to keep for next time."""
    state = _seed(state, obs)
    last_busy_t = obs.t if obs.backlog > 0 else state.last_busy_t
    raw = _recommend(policy, obs, last_busy_t)
    recommendations = _remember(policy, state.recommendations, Recommendation(obs.t, raw.desired))
    verdict = raw
    if raw.reason is not Reason.IDLE_TO_ZERO:  # the idle period is the stabilization of the last step to zero
        verdict = _stabilize(policy, obs, recommendations, raw)
    verdict = _limit_rate(policy, obs.current, verdict)
    starting_since_t = None
    if obs.starting > 0:
        starting_since_t = obs.t if state.starting_since_t is None else state.starting_since_t
    verdict = _hold_while_starting(policy, obs, starting_since_t, verdict)
    verdict, shortfall = _cap_by_gpus(obs.gpu_capacity, verdict)
    new_state = WindowState(recommendations, last_busy_t, starting_since_t)
    return Decision(*verdict, raw.desired, shortfall, new_state)


def _seed(state: WindowState, obs: Observation) -> WindowState:
    """A pool seen for the first time: treat the current size as just recommended and the pool as just busy,
    so that nothing scales down before a full window (and idle period) has been observed."""
    if state.recommendations or state.last_busy_t is not None:
        return state
    return WindowState((Recommendation(obs.t, obs.current),), obs.t)


def _recommend(policy: ScalingPolicy, obs: Observation, last_busy_t: float | None) -> Verdict:
    """Steps 1–3: the raw recommendation from the backlog, the idle rule and the clamps."""
    target = policy.target_backlog_per_replica
    needed = math.ceil(obs.backlog / target)
    usage_ratio = obs.backlog / (target * obs.current) if obs.current else math.inf
    if obs.backlog > 0 and abs(usage_ratio - 1) <= policy.tolerance:
        message = f"backlog {obs.backlog} is within {policy.tolerance:.0%} of {obs.current} × {target}"
        verdict = Verdict(obs.current, Reason.WITHIN_TOLERANCE, message)
    elif obs.backlog > 0:
        reason = Reason.WAKE_UP if obs.current == 0 else _direction(obs.current, needed)
        verdict = Verdict(needed, reason, f"backlog {obs.backlog} / target {target} per replica → {needed}")
    else:
        verdict = _when_idle(policy, obs, last_busy_t)
    if verdict.desired > policy.max_replicas:
        message = f"{verdict.message}, clamped to maxReplicas {policy.max_replicas}"
        return Verdict(policy.max_replicas, Reason.MAX_REPLICAS, message)
    if verdict.desired < policy.min_replicas:
        message = f"{verdict.message}, raised to minReplicas {policy.min_replicas}"
        return Verdict(policy.min_replicas, Reason.MIN_REPLICAS, message)
    return verdict


def _when_idle(policy: ScalingPolicy, obs: Observation, last_busy_t: float | None) -> Verdict:
    """No backlog: keep one replica until the pool has been idle for the idle period, then zero."""
    idle_for = obs.t - last_busy_t if last_busy_t is not None else math.inf
    if obs.current == 0:
        return Verdict(0, Reason.STEADY, "no backlog, no replicas")
    if idle_for >= policy.scale_to_zero_after_s:
        return Verdict(
            0, Reason.IDLE_TO_ZERO, f"idle for {idle_for:.0f} s ≥ {policy.scale_to_zero_after_s:.0f} s"
        )
    message = f"no backlog; one replica stays until idle for {policy.scale_to_zero_after_s:.0f} s"
    return Verdict(1, _direction(obs.current, 1), f"{message} (idle for {idle_for:.0f} s)")


def _direction(current: int, desired: int) -> Reason:
    if desired > current:
        return Reason.SCALE_UP
    if desired < current:
        return Reason.SCALE_DOWN
    return Reason.STEADY


def _remember(
    policy: ScalingPolicy, recommendations: tuple[Recommendation, ...], new: Recommendation
) -> tuple[Recommendation, ...]:
    """Keep the recommendations still inside the longest window, plus the new one."""
    cutoff = new.t - policy.longest_window_s
    return (*(rec for rec in recommendations if rec.t >= cutoff and rec.t <= new.t), new)


def _stabilize(
    policy: ScalingPolicy, obs: Observation, recommendations: tuple[Recommendation, ...], raw: Verdict
) -> Verdict:
    """Step 4, as the HPA does it: up to the window's lowest, down only to the window's highest (a window of
    0 s holds only the recommendation just made)."""
    up_cutoff = obs.t - policy.scale_up_window_s
    down_cutoff = obs.t - policy.scale_down_window_s
    up_to = min((rec.replicas for rec in recommendations if rec.t > up_cutoff), default=raw.desired)
    down_to = max((rec.replicas for rec in recommendations if rec.t > down_cutoff), default=raw.desired)
    desired = min(max(obs.current, up_to), down_to)
    if desired == raw.desired:
        return raw
    window = policy.scale_down_window_s if desired > raw.desired else policy.scale_up_window_s
    return Verdict(
        desired, Reason.STABILIZING, f"{raw.message}; stabilized at {desired} over the last {window:g} s"
    )


def _limit_rate(policy: ScalingPolicy, current: int, verdict: Verdict) -> Verdict:
    """Step 5, the HPA's rate policies with selectPolicy Max (the policy allowing the larger change wins)."""
    if verdict.desired > current:
        by_percent = math.ceil(current * (1 + policy.scale_up_max_step_percent / 100))
        highest = max(by_percent, current + policy.scale_up_max_step_replicas)
        if verdict.desired > highest:
            message = f"{verdict.message}; scale-up limited to {highest} this step"
            return Verdict(highest, Reason.SCALE_UP_LIMITED, message)
    elif verdict.desired < current:
        lowest = math.ceil(current * (1 - policy.scale_down_max_step_percent / 100))
        if policy.scale_down_max_step_replicas is not None:
            lowest = min(lowest, current - policy.scale_down_max_step_replicas)
        if verdict.desired < lowest:
            message = f"{verdict.message}; scale-down limited to {lowest} this step"
            return Verdict(lowest, Reason.SCALE_DOWN_LIMITED, message)
    return verdict


def _hold_while_starting(
    policy: ScalingPolicy, obs: Observation, starting_since_t: float | None, verdict: Verdict
) -> Verdict:
    """Step 6: no scale-down while replicas are starting, unless they have been starting too long."""
    if verdict.desired >= obs.current or starting_since_t is None:
        return verdict
    starting_for = obs.t - starting_since_t
    if starting_for >= policy.startup_grace_s:
        return verdict._replace(message=f"{verdict.message}; not ready after {starting_for:.0f} s")
    message = f"{obs.starting} replica(s) still starting; scale-down waits until they are ready"
    return Verdict(obs.current, Reason.HOLD_STARTING, message)


def _cap_by_gpus(capacity: int | None, verdict: Verdict) -> tuple[Verdict, int]:
    """Step 7: never ask for more replicas than the GPUs can hold; report the difference."""
    if capacity is None or verdict.desired <= capacity:
        return verdict, 0
    shortfall = verdict.desired - capacity
    message = f"{verdict.message}; capped at {capacity}: {shortfall} short of GPUs"
    return Verdict(capacity, Reason.GPU_CAPPED, message), shortfall
