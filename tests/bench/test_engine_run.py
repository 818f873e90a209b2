"""`gorgon bench engine`'s measuring: the order the modes run in, how runs add up, and a run on a tiny engine."""

from __future__ import annotations

from collections import Counter

from gorgon.bench.engine import shape_mix
from gorgon.bench.engine_run import (
    RunOutput,
    _batch_results,
    _interleaved_rounds,
    merged,
    prompt_groups,
    run_engine,
    run_hf_generate,
)
from gorgon.engine.medusa_engine import MedusaEngine


def test_rounds_alternate_the_order_and_report_the_median() -> None:
    calls: list[str] = []
    seconds = {
        "hf_generate": iter([1.0, 4.0, 2.0]),
        "plain": iter([2.0, 2.0, 8.0]),
        "medusa": iter([1.0] * 3),
    }

    def runner(mode: str):
        def run(prompts):
            calls.append(mode)
            tokens = [[1, 2], [3, 4]] if mode != "medusa" or len(calls) < 9 else [[1, 2], [3, 5]]
            return RunOutput(tokens, next(seconds[mode]), 1.5 if mode == "medusa" else 1.0)

        return run

    outputs = _interleaved_rounds({mode: runner(mode) for mode in seconds}, [[[0]]], 3, lambda: None)
    order = ["hf_generate", "plain", "medusa"]
    assert calls == [*order, *reversed(order), *order]
    results = {result.mode: result for result in _batch_results(2, outputs)}
    assert results["hf_generate"].tokens_per_s == 4 / 2.0  # median of 4, 1, 2 tokens/s
    assert results["plain"].tokens_per_s == 4 / 2.0
    assert results["medusa"].tokens_per_step == 1.5
    assert results["medusa"].identical_to_plain is False  # the last round's output differed


def test_modes_take_turns_batch_by_batch() -> None:
    """A machine slowing down over a run slows every mode alike: no mode runs all its batches first."""
    calls: list[tuple[str, int]] = []

    def runner(mode: str):
        def run(group):
            calls.append((mode, group[0][0]))
            return RunOutput([[1]] * len(group), 1.0, 1.0)

        return run

    progress: list[int] = []
    modes = ("hf_generate", "plain", "medusa")
    outputs = _interleaved_rounds(
        {mode: runner(mode) for mode in modes}, [[[0]], [[1]]], 2, lambda: progress.append(1)
    )
    forward, backward = list(modes), list(reversed(modes))
    expected = [(mode, group) for group, order in ((0, forward), (1, backward)) for mode in order]
    expected += [(mode, group) for group, order in ((0, backward), (1, forward)) for mode in order]
    assert calls == expected
    assert len(progress) == 12
    assert all(len(runs) == 2 and len(runs[0].token_ids) == 2 for runs in outputs.values())


def test_every_batch_size_runs_every_prompt() -> None:
    prompts = [[index] for index in range(6)]
    assert prompt_groups(prompts, 1) == [[[index]] for index in range(6)]
    assert prompt_groups(prompts, 4) == [[[0], [1], [2], [3]], [[4], [5], [0], [1]]]
    assert prompt_groups(prompts, 6) == [prompts]
    assert prompt_groups(prompts, 8) == [[*prompts, [0], [1]]]


def test_batches_of_one_mode_add_up_to_one_output() -> None:
    def run(group):
        return RunOutput(
            [[token] * 3 for [token] in group], 0.5 * len(group), 2.0 if len(group) == 2 else 1.0
        )

    output = merged([run(group) for group in [[[1], [2]], [[3]]]])
    assert output.token_ids == [[1] * 3, [2] * 3, [3] * 3]
    assert output.shape_steps == {}
    assert output.seconds == 1.5
    assert output.tokens_per_step == (2.0 * 2 + 1.0) / 3  # averaged over sequences, not batches
    assert output.tokens_per_s == 9 / 1.5


def test_shape_steps_add_up_over_batches_and_rounds() -> None:
    def run(group):
        return RunOutput([[1]] * len(group), 1.0, 1.0, Counter({"chain_4": 3 * len(group), "plain": 1}))

    output = merged([run(group) for group in [[[1], [2]], [[3]]]])
    assert output.shape_steps == {"chain_4": 9, "plain": 2}
    plain = RunOutput([[1]] * 3, 1.0, 1.0, Counter({"plain": 5}))
    results = {r.mode: r for r in _batch_results(3, {"plain": [plain, plain], "medusa": [output, output]})}
    assert results["medusa"].shape_steps == {"chain_4": 18, "plain": 4}
    assert results["plain"].shape_steps == {"plain": 10}
    assert shape_mix(results["medusa"].shape_steps) == "chain_4 82% · plain 18%"
    assert shape_mix({}) == ""


def test_an_engine_run_reports_the_steps_of_each_shape(cycling_engine: MedusaEngine) -> None:
    output = run_engine(cycling_engine, [[5, 6, 7], [8, 9]], 12)
    names = {shape.name for shape in cycling_engine.scheduler.selector.shapes}
    assert set(output.shape_steps) == names  # cycling runs every shape
    # every step but the prefill: one forward for both prompts
    assert sum(output.shape_steps.values()) == cycling_engine.forward_passes - 1
    again = run_engine(cycling_engine, [[5, 6, 7]], 6)
    assert sum(again.shape_steps.values()) < sum(output.shape_steps.values())  # counted per run


def test_hf_generate_runs_a_left_padded_batch_up_to_each_rows_end(cycling_engine: MedusaEngine) -> None:
    output = run_hf_generate(cycling_engine.loaded, [[5, 6, 7], [8, 9]], 4)
    assert len(output.token_ids) == 2
    assert all(1 <= len(tokens) <= 4 for tokens in output.token_ids)
    assert output.seconds > 0 and output.tokens_per_step == 1.0
