from __future__ import annotations

import json
from dataclasses import replace

from gorgon_operator.policy import (
    Decision,
    Observation,
    Reason,
    ScalingPolicy,
    WindowState,
    decide,
)

POLICY = ScalingPolicy(target_backlog_per_replica=8, min_replicas=0, max_replicas=20)
STEP_S = 15


def replay(
    policy: ScalingPolicy, backlogs: list[int], *, start: int = 0, persist: bool = False
) -> list[Decision]:
    """Drive the policy one sample every 15 s; replicas become ready at once. With `persist`, the window state
    goes through the WorkerPool status (JSON) between every two decisions, as across operator restarts."""
    state, replicas, decisions = WindowState(), start, []
    for index, backlog in enumerate(backlogs):
        if persist:
            state = WindowState.from_status(json.loads(json.dumps(state.to_status())))
        decision = decide(policy, state, Observation(index * STEP_S, backlog, replicas, replicas))
        decisions.append(decision)
        state, replicas = decision.state, decision.desired
    return decisions


def desired(decisions: list[Decision]) -> list[int]:
    return [decision.desired for decision in decisions]


def test_burst_scales_up_at_once_by_at_most_four_or_double_per_step() -> None:
    decisions = replay(POLICY, [0, 100, 100, 100, 100])
    assert desired(decisions) == [0, 4, 8, 13, 13]
    assert decisions[1].reason is Reason.SCALE_UP_LIMITED
    assert decisions[3].reason is Reason.SCALE_UP


def test_steady_load_within_tolerance_keeps_the_replica_count() -> None:
    backlogs = [32, 30, 34, 35, 29, 33, 31, 35, 30]
    decisions = replay(POLICY, backlogs, start=4)
    assert desired(decisions) == [4] * len(backlogs)
    assert {decision.reason for decision in decisions[1:]} == {Reason.WITHIN_TOLERANCE}


def test_load_just_outside_tolerance_changes_the_count() -> None:
    assert decide(POLICY, WindowState(), Observation(0, 36, 4, 4)).desired == 5  # 36 / 32 = 1.125 > 1.1


def test_slow_drain_scales_down_only_to_the_highest_recommendation_of_the_last_300_s() -> None:
    backlogs = [max(0, 160 - 4 * index) for index in range(60)]  # 20 replicas' worth, draining over 10 min
    decisions = replay(replace(POLICY, scale_to_zero_after_s=3600), backlogs, start=20)
    for index, decision in enumerate(decisions):
        in_window = [d.recommendation for d in decisions[max(0, index - 19) : index + 1]]  # (t - 300 s, t]
        assert decision.desired == max(*in_window, decision.recommendation)
    assert desired(decisions) == sorted(desired(decisions), reverse=True)
    assert decisions[19].desired == 20  # nothing removed during the first window
    assert decisions[-1].desired < 20


def test_idle_pool_scales_to_zero_after_the_idle_period_and_wakes_on_the_first_request() -> None:
    policy = replace(POLICY, scale_to_zero_after_s=120, scale_down_window_s=60)
    backlogs = [16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    decisions = replay(policy, backlogs, start=2)
    assert desired(decisions)[:9] == [2, 2, 2, 2, 1, 1, 1, 1, 0]  # idle since t=0: zero at t=120
    assert decisions[8].reason is Reason.IDLE_TO_ZERO
    assert decisions[9].desired == 0
    assert decisions[10].desired == 1
    assert decisions[10].reason is Reason.WAKE_UP


def test_backlog_during_the_idle_period_restarts_it() -> None:
    policy = replace(POLICY, scale_to_zero_after_s=60, scale_down_window_s=0)
    decisions = replay(policy, [0, 0, 0, 2, 0, 0, 0, 0], start=1)
    assert desired(decisions) == [1, 1, 1, 1, 1, 1, 1, 0]  # idle again from t=45; zero at t=105


def test_flapping_load_changes_the_count_at_most_once_per_window() -> None:
    backlogs = [40 if index % 2 else 8 for index in range(80)]  # 20 min of 5 ↔ 1 replicas' worth
    counts = desired(replay(POLICY, backlogs, start=1))
    changes = [index for index in range(1, len(counts)) if counts[index] != counts[index - 1]]
    assert len(changes) == 1
    assert counts[-1] == 5


def test_restart_with_persisted_window_state_decides_exactly_as_without_restart() -> None:
    backlogs = [0, 80, 80, 40, 8, 0, 0, 3, 0, 50, 0, *([0] * 40), 2]
    policy = replace(POLICY, scale_to_zero_after_s=200)
    continuous = replay(policy, backlogs)
    restarted = replay(policy, backlogs, persist=True)
    assert desired(restarted) == desired(continuous)
    assert [d.reason for d in restarted] == [d.reason for d in continuous]


def test_restart_without_state_scales_nothing_down_for_a_full_window() -> None:
    policy = replace(POLICY, scale_to_zero_after_s=3600)
    fresh = decide(policy, WindowState(), Observation(1000, 0, 6, 6))
    assert fresh.desired == 6
    later = decide(policy, fresh.state, Observation(1000 + 299, 0, 6, 6))
    assert later.desired == 6
    after_window = decide(policy, later.state, Observation(1000 + 301, 0, 6, 6))
    assert after_window.desired == 1


def test_max_replicas_clamps_a_huge_backlog() -> None:
    policy = replace(POLICY, max_replicas=3)
    decisions = replay(policy, [10_000] * 4)
    assert desired(decisions) == [3, 3, 3, 3]
    assert decisions[-1].reason is Reason.MAX_REPLICAS


def test_min_replicas_keeps_workers_through_long_idle() -> None:
    policy = replace(POLICY, min_replicas=2, scale_to_zero_after_s=0, scale_down_window_s=0)
    decisions = replay(policy, [0] * 30, start=5)
    assert desired(decisions)[-1] == 2
    assert decisions[-1].reason is Reason.MIN_REPLICAS


def test_gpu_cap_limits_replicas_and_reports_the_shortfall() -> None:
    decision = decide(POLICY, WindowState(), Observation(0, 80, 2, 2, gpu_capacity=3))
    assert decision.recommendation == 10
    assert decision.desired == 3
    assert decision.gpu_shortfall == 3  # the step limit allowed 6; the GPUs hold 3
    assert decision.reason is Reason.GPU_CAPPED


def test_gpu_cap_removes_pods_that_cannot_be_scheduled_even_while_starting() -> None:
    decision = decide(POLICY, WindowState(), Observation(0, 80, 6, 2, gpu_capacity=2))
    assert decision.desired == 2


def test_starting_pods_count_as_capacity() -> None:
    decision = decide(POLICY, WindowState(), Observation(0, 32, 4, 0))
    assert decision.desired == 4


def test_starting_pods_are_never_removed_as_idle() -> None:
    policy = replace(POLICY, scale_to_zero_after_s=0, scale_down_window_s=0)
    waiting_for_gpu_node = decide(policy, WindowState(last_busy_t=0), Observation(600, 0, 1, 0))
    assert waiting_for_gpu_node.desired == 1
    assert waiting_for_gpu_node.reason is Reason.HOLD_STARTING
    once_ready = decide(policy, waiting_for_gpu_node.state, Observation(615, 0, 1, 1))
    assert once_ready.desired == 0


def test_a_replica_that_never_becomes_ready_stops_blocking_after_the_startup_grace() -> None:
    policy = replace(POLICY, scale_to_zero_after_s=0, scale_down_window_s=0, startup_grace_s=600)
    state = WindowState(last_busy_t=0)
    for t in (0, 300, 599):
        decision = decide(policy, state, Observation(t, 0, 2, 1))
        assert decision.desired == 2 and decision.reason is Reason.HOLD_STARTING
        state = decision.state
    assert state.starting_since_t == 0
    assert decide(policy, state, Observation(600, 0, 2, 1)).desired == 0


def test_the_startup_clock_restarts_once_every_replica_was_ready() -> None:
    policy = replace(POLICY, scale_to_zero_after_s=0, scale_down_window_s=0, startup_grace_s=600)
    state = decide(policy, WindowState(last_busy_t=0), Observation(0, 0, 2, 1)).state
    state = decide(policy, state, Observation(100, 5, 2, 2)).state
    assert state.starting_since_t is None
    held = decide(policy, state, Observation(700, 0, 3, 2))
    assert held.reason is Reason.HOLD_STARTING


def test_window_state_forgets_recommendations_older_than_the_longest_window() -> None:
    first = decide(POLICY, WindowState(), Observation(0, 80, 10, 10))
    later = decide(POLICY, first.state, Observation(301, 80, 10, 10))
    assert [rec.t for rec in later.state.recommendations] == [301]
