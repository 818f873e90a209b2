"""The speculation shapes on offer, and the selector: tries every shape, then keeps the fastest per batch-size
bucket."""

from __future__ import annotations

import torch
from engine_tiny import random_heads

from gorgon.engine.config import EngineSettings
from gorgon.engine.shapes import (
    ACCEPTANCE_SAMPLES,
    COST_SAMPLES,
    REEXPLORE_EVERY,
    REFRESH_SAMPLES,
    ShapeSelector,
    batch_bucket,
    build_shapes,
)
from gorgon.engine.tree import build_tree_buffers, chain


def _selector() -> ShapeSelector:
    return ShapeSelector(
        [
            build_tree_buffers((), name="plain"),
            build_tree_buffers(chain(3), name="chain_3"),
            build_tree_buffers([(0,), (1,), (0, 0), (0, 0, 0)], name="tree"),
        ]
    )


# seconds per step by (shape, batch): the tree costs little at batch 1 and a lot at batch 16
STEP_SECONDS = {
    ("plain", 1): 0.040,
    ("chain_3", 1): 0.045,
    ("tree", 1): 0.050,
    ("plain", 16): 0.100,
    ("chain_3", 16): 0.250,
    ("tree", 16): 0.350,
}
TOKENS_PER_ROW = {"plain": 1, "chain_3": 2, "tree": 3}


def _run(selector: ShapeSelector, batch: int, steps: int) -> list[str]:
    chosen = []
    for _ in range(steps):
        shape = selector.choose(batch, speculative_rows=batch)
        chosen.append(shape.name)
        gained = [TOKENS_PER_ROW[shape.name]] * batch if shape.num_nodes > 1 else []
        selector.record(shape, batch, STEP_SECONDS[(shape.name, batch)], gained)
    return chosen


EXPLORATION = 2 + 2 * (2 + 2 * COST_SAMPLES + ACCEPTANCE_SAMPLES)
"""Steps by which every shape is judged (at most): plain's warm-up and first timed step, then for each speculative
shape its warm-up, its cost ratios (alternating with plain steps) and the rest of its acceptance samples."""


def test_explores_every_shape_then_picks_the_fastest() -> None:
    selector = _selector()
    chosen = _run(selector, batch=1, steps=EXPLORATION + 20)
    assert set(chosen[:EXPLORATION]) == {"plain", "chain_3", "tree"}
    assert set(chosen[EXPLORATION:]) == {"tree"}  # 3 tokens / 0.05 s beats 2 / 0.045 s and 1 / 0.04 s


def test_the_first_step_of_a_shape_is_not_timed() -> None:
    selector = _selector()
    plain = selector.plain
    selector.record(plain, 1, 5.0, [])  # a cold first step
    selector.record(plain, 1, 0.04, [])
    assert selector.step_seconds[("plain", 1)].value == 0.04
    assert selector.step_seconds[("plain", 1)].samples == 1


def test_a_cost_is_the_ratio_of_adjacent_speculative_and_plain_steps() -> None:
    selector = _selector()
    plain, chain_3 = selector.shapes[:2]
    for shape in (plain, chain_3):  # warm-ups: not timed
        selector.record(shape, 1, 1.0, [2] if shape is chain_3 else [])
    selector.record(plain, 1, 0.040, [])
    selector.record(chain_3, 1, 0.050, [2])  # next to plain: 1.25
    selector.record(chain_3, 1, 0.060, [2])  # next to chain_3: no ratio
    selector.record(plain, 1, 0.040, [])  # next to chain_3: 1.5
    selector.record(chain_3, 3, 0.200, [2, 2, 2])  # warm-up at bucket 4
    selector.record(chain_3, 4, 0.200, [2, 2, 2, 2])  # next to chain_3 at bucket 4: no ratio
    selector.record(plain, 1, 0.040, [])  # next to a bucket-4 step: no ratio
    assert list(selector.cost_in_plain_steps[("chain_3", 1)].recent) == [1.25, 1.5]
    assert not selector.cost_in_plain_steps[("chain_3", 4)].recent
    assert not selector.cost_in_plain_steps[("tree", 1)].recent


def test_large_batches_fall_back_to_plain() -> None:
    selector = _selector()
    _run(selector, batch=1, steps=EXPLORATION)
    chosen = _run(selector, batch=16, steps=40)
    assert chosen[-20:] == ["plain"] * 20  # 3 / 0.35 s and 2 / 0.25 s lose to 1 / 0.1 s
    assert selector.choose(1, speculative_rows=1).name == "tree"  # batch 1 keeps its own measurements


def test_no_speculative_rows_means_plain() -> None:
    assert _selector().choose(4, speculative_rows=0).name == "plain"


def test_other_shapes_are_remeasured_now_and_then() -> None:
    selector = ShapeSelector(
        [build_tree_buffers((), name="plain"), build_tree_buffers(chain(3), name="chain_3")]
    )
    seconds = {"plain": 0.040, "chain_3": 0.085}  # 2 tokens per 0.085 s: 0.94 of plain's rate, close enough
    chosen = []
    for _ in range(EXPLORATION + 2 * REEXPLORE_EVERY):
        shape = selector.choose(1, speculative_rows=1)
        chosen.append(shape.name)
        selector.record(shape, 1, seconds[shape.name], [2] if shape.num_nodes > 1 else [])
    assert chosen[-1] == "plain" and "chain_3" in chosen[EXPLORATION:]


def test_shapes_are_explored_bottom_up() -> None:
    """A worker that starts with a full batch does not try trees there before it knows their cost at a small
    batch: it decodes plain until the batch shrinks."""
    selector = _selector()
    assert set(_run(selector, batch=16, steps=REEXPLORE_EVERY + 10)) == {"plain"}
    assert {"chain_3", "tree"} <= set(_run(selector, batch=1, steps=EXPLORATION))


def test_batch_buckets_are_powers_of_two() -> None:
    assert [batch_bucket(size) for size in (1, 2, 3, 4, 5, 9, 16)] == [1, 2, 4, 4, 8, 16, 16]


def test_shape_losing_at_small_batch_is_not_explored_at_larger_batches() -> None:
    selector = _selector()
    losing = {"plain": 1, "chain_3": 1, "tree": 1}  # untrained heads: nothing accepted
    for _ in range(EXPLORATION):
        shape = selector.choose(1, speculative_rows=1)
        gained = [losing[shape.name]] if shape.num_nodes > 1 else []
        selector.record(shape, 1, STEP_SECONDS[(shape.name, 1)], gained)
    assert selector.choose(1, speculative_rows=1).name == "plain"
    assert selector.choose(16, speculative_rows=16).name == "plain"  # no exploration at 16


def test_shape_winning_narrowly_at_batch_1_is_not_explored_at_batch_4() -> None:
    """Measured here (SmolLM2, 2 cores without AMX): a 4-deep chain costs 1.18 plain steps at batch 1 and gains
    1.49 tokens (1.26x); verifying 20 rows at batch 4 costs far more than 4 rows, so it is not tried there."""
    selector = ShapeSelector(
        [build_tree_buffers((), name="plain"), build_tree_buffers(chain(4), name="chain_4")]
    )
    seconds = {("plain", 1): 0.037, ("chain_4", 1): 0.0437, ("plain", 2): 0.038, ("chain_4", 2): 0.0517}
    seconds[("plain", 4)] = 0.040

    def run(batch: int, steps: int) -> list[str]:
        chosen = []
        for _ in range(steps):
            shape = selector.choose(batch, speculative_rows=batch)
            chosen.append(shape.name)
            selector.record(
                shape, batch, seconds[(shape.name, batch)], [1.49] * batch if shape.num_nodes > 1 else []
            )
        return chosen

    run(1, EXPLORATION)
    assert selector.choose(1, speculative_rows=1).name == "chain_4"
    assert "chain_4" in run(2, 2 * EXPLORATION)  # predicted 1.36 plain steps for 1.49 tokens: explored
    assert selector.choose(2, speculative_rows=2).name == "chain_4"  # and measured 1.36: it still wins
    assert set(run(4, REEXPLORE_EVERY - 1)) == {"plain"}  # predicted 1.72 plain steps: not explored


def test_a_run_of_unlucky_steps_does_not_switch_a_winning_chain_off() -> None:
    """Acceptance comes in runs (a hard passage of text); the chain still gains 1.67 tokens per step on average
    at 1.12 plain steps' cost. An exponential mean dipped below break-even after twelve 1-token steps and left
    the selector on plain until its next re-measurement."""
    selector = ShapeSelector(
        [build_tree_buffers((), name="plain"), build_tree_buffers(chain(4), name="chain_4")]
    )
    seconds = {"plain": 0.0367, "chain_4": 0.0411}
    pattern = [1] * 12 + [3] * 6
    chosen = []
    for step in range(EXPLORATION + 3 * REEXPLORE_EVERY // 2):
        shape = selector.choose(1, speculative_rows=1)
        chosen.append(shape.name)
        gained = [pattern[step % len(pattern)]] if shape.num_nodes > 1 else []
        selector.record(shape, 1, seconds[shape.name], gained)
    after_exploration = chosen[EXPLORATION:]
    assert after_exploration.count("plain") <= 2  # the periodic re-measurement only


def test_a_shape_far_slower_than_the_best_is_not_remeasured() -> None:
    selector = ShapeSelector(
        [build_tree_buffers((), name="plain"), build_tree_buffers(chain(3), name="chain_3")]
    )
    seconds = {"plain": 0.100, "chain_3": 0.400}  # 2 tokens per 0.4 s: half of plain's rate at batch 16
    chosen = []
    for _ in range(EXPLORATION + 2 * REEXPLORE_EVERY):
        shape = selector.choose(16, speculative_rows=16)
        chosen.append(shape.name)
        selector.record(shape, 16, seconds[shape.name], [2] * 16 if shape.num_nodes > 1 else [])
    assert "chain_3" not in chosen[EXPLORATION:]


def test_a_burst_of_slow_steps_while_plain_is_measured_does_not_keep_a_losing_chain() -> None:
    """Costs are ratios of adjacent steps. At batch 4 a 4-deep chain costing 2.0 plain steps for 1.6 tokens
    loses; another process slowing the first steps at batch 4 by 1.6x makes plain look slower than the chain, and
    compared as absolute times, the selector would keep the chain until plain was re-measured often enough to
    move its median."""
    selector = ShapeSelector(
        [build_tree_buffers((), name="plain"), build_tree_buffers(chain(4), name="chain_4")]
    )
    seconds = {("plain", 1): 0.0358, ("chain_4", 1): 0.0376, ("plain", 4): 0.0293, ("chain_4", 4): 0.0583}
    tokens = {1: 1.58, 4: 1.61}

    def run(batch: int, steps: int, slow_steps: int = 0) -> list[str]:
        chosen = []
        for step in range(steps):
            shape = selector.choose(batch, speculative_rows=batch)
            chosen.append(shape.name)
            slowdown = 1.6 if step < slow_steps else 1.0
            gained = [tokens[batch]] * batch if shape.num_nodes > 1 else []
            selector.record(shape, batch, seconds[(shape.name, batch)] * slowdown, gained)
        return chosen

    run(1, EXPLORATION)
    assert selector.choose(1, speculative_rows=1).name == "chain_4"
    at_batch_4 = run(4, REEXPLORE_EVERY - 1, slow_steps=4)
    assert set(at_batch_4[EXPLORATION:]) == {"plain"}


def test_a_remeasurement_takes_fresh_cost_ratios_next_to_plain_steps() -> None:
    """A chain chosen at batch 1 keeps its cost up to date: when its steps grow dearer (a longer context, a
    heavier load on the cores its verification needs), the next re-measurements put plain decoding back."""
    selector = ShapeSelector(
        [build_tree_buffers((), name="plain"), build_tree_buffers(chain(4), name="chain_4")]
    )
    seconds = {"plain": 0.036, "chain_4": 0.038}
    chosen = []
    for step in range(EXPLORATION + 3 * REEXPLORE_EVERY):
        if step == EXPLORATION:
            seconds["chain_4"] = 0.072  # now 2 plain steps for 1.6 tokens
        shape = selector.choose(1, speculative_rows=1)
        chosen.append(shape.name)
        selector.record(shape, 1, seconds[shape.name], [1.6] if shape.num_nodes > 1 else [])
    assert chosen[EXPLORATION] == "chain_4"
    last_steps = chosen[-REEXPLORE_EVERY // 2 :]
    assert last_steps.count("chain_4") <= REFRESH_SAMPLES  # a re-measurement's own steps
    assert last_steps[-1] == "plain"


def test_a_chain_judged_on_hard_text_is_judged_again_when_plain_decoding_runs() -> None:
    """Acceptance varies with the text. Explored on a hard opening (1.05 tokens per step at 1.12 plain steps'
    cost), the chain loses to plain; the text that follows would give it 1.8 tokens per step. A re-measurement at
    batch 1 judges its acceptance again on the text decoded now, so the chain comes back."""
    selector = ShapeSelector(
        [build_tree_buffers((), name="plain"), build_tree_buffers(chain(4), name="chain_4")]
    )
    seconds = {"plain": 0.030, "chain_4": 0.0336}
    chosen = []
    for step in range(2 * REEXPLORE_EVERY):
        shape = selector.choose(1, speculative_rows=1)
        chosen.append(shape.name)
        gained = 1.05 if step < EXPLORATION else 1.8
        selector.record(shape, 1, seconds[shape.name], [gained] if shape.num_nodes > 1 else [])
    assert chosen[EXPLORATION:REEXPLORE_EVERY].count("chain_4") == 0  # judged on the hard opening
    assert set(chosen[-REEXPLORE_EVERY // 2 :]) == {"chain_4"}


def test_judging_acceptance_afresh_runs_the_shape_at_batch_1_only() -> None:
    """Re-judging runs a shape for ACCEPTANCE_SAMPLES steps. At batch 4, where the chain costs 2 plain steps, those
    steps would be a loss, so a batch that grows meanwhile decodes plain."""
    selector = ShapeSelector(
        [build_tree_buffers((), name="plain"), build_tree_buffers(chain(4), name="chain_4")]
    )
    seconds = {("plain", 1): 0.030, ("chain_4", 1): 0.0336, ("plain", 2): 0.030, ("chain_4", 2): 0.040}
    seconds |= {("plain", 4): 0.030, ("chain_4", 4): 0.060}
    gained = {"tokens": 1.8}

    def run(batch: int, steps: int) -> list[str]:
        chosen = []
        for _ in range(steps):
            shape = selector.choose(batch, speculative_rows=batch)
            chosen.append(shape.name)
            tokens = [gained["tokens"]] * batch if shape.num_nodes > 1 else []
            selector.record(shape, batch, seconds[(shape.name, batch)], tokens)
        return chosen

    for batch in (1, 2, 4):  # easy text: the chain is measured at every bucket
        run(batch, EXPLORATION)
    chain_4 = selector.shapes[1]
    assert selector.measured(chain_4, 4) and selector.choose(4, speculative_rows=4).name == "plain"
    gained["tokens"] = 1.05  # hard text: the chain falls behind plain at batch 1 too
    run(1, REEXPLORE_EVERY - selector.steps_at_bucket[1])  # the re-measurement at batch 1 starts re-judging
    assert not selector.tokens_per_row["chain_4"].recent  # its acceptance is to be judged afresh
    assert set(run(4, ACCEPTANCE_SAMPLES)) == {"plain"}
    assert run(1, 2 * COST_SAMPLES + ACCEPTANCE_SAMPLES).count("chain_4") >= ACCEPTANCE_SAMPLES


def _chain_and_lookahead_tree_selector() -> ShapeSelector:
    return ShapeSelector(
        [
            build_tree_buffers((), name="plain"),
            build_tree_buffers(chain(2), name="chain_2"),
            build_tree_buffers([(0,), (0, 0), (1,), (0, 0, 0), (0, 1)], name="tree", lookahead=True),
        ]
    )


def test_a_lookahead_tree_step_also_measures_the_chains_on_its_spine() -> None:
    """A lookahead tree verifies its top-1 chain exactly as a chain step does, so a tree step that emitted t
    tokens for a row is one in which a chain of depth d would have emitted min(t, d + 1)."""
    selector = _chain_and_lookahead_tree_selector()
    chain_2, tree = selector.shapes[1], selector.shapes[2]
    assert selector.chains_verified_by(tree) == [chain_2]
    selector.record(tree, 2, 0.05, [4, 2])
    assert selector.tokens_per_row["tree"].value == 3.0
    assert selector.tokens_per_row["chain_2"].value == 2.5  # min(4, 3) and min(2, 3)
    selector.record(chain_2, 1, 0.04, [3])
    assert selector.tokens_per_row["tree"].value == 3.0  # a chain step tells nothing of the tree's leaves


def test_a_gathered_tree_does_not_stand_for_a_chain() -> None:
    """A branching tree run by gathering keys per node may accept off its top-1 chain: its token count does not
    say what the chain would have accepted."""
    selector = _selector()
    assert selector.chains_verified_by(selector.shapes[2]) == []
    assert selector.chains_verified_by(selector.shapes[0]) == []


def test_a_chain_judged_on_hard_text_comes_back_when_the_tree_runs_on_easy_text() -> None:
    """The chain is explored on hard text (1.1 tokens per step), the tree after it on easy text, where both would
    gain 3. Each tree step also measures the chain on the text decoded now, so the cheaper chain is chosen;
    judged only by its own steps, the chain would stay at 1.1 and lose to the tree until a re-measurement."""
    selector = _chain_and_lookahead_tree_selector()
    seconds = {"plain": 0.030, "chain_2": 0.031, "tree": 0.045}
    chosen = []
    for step in range(REEXPLORE_EVERY - 1):
        shape = selector.choose(1, speculative_rows=1)
        chosen.append(shape.name)
        hard = shape.name == "chain_2" and step < EXPLORATION
        tokens = [] if shape.num_nodes == 1 else [1.1 if hard else 3]
        selector.record(shape, 1, seconds[shape.name], tokens)
    assert "tree" in chosen[:EXPLORATION]
    assert set(chosen[-REEXPLORE_EVERY // 2 :]) == {"chain_2"}  # 3 tokens either way: the cheaper shape wins


def test_a_named_tree_is_cut_to_the_heads_available(tmp_path) -> None:
    settings = EngineSettings(medusa_choices="mc_sim_7b_63", heads_path=tmp_path)
    plain, chain_2, tree = build_shapes(settings, random_heads(2), torch.device("cpu"))
    assert (plain.num_nodes, chain_2.name, tree.name) == (1, "chain_2", "mc_sim_7b_63")
    assert tree.max_depth == 2
    assert all(len(path) <= 2 for path in tree.choices)


def test_without_heads_only_plain_decoding_is_offered() -> None:
    assert [shape.name for shape in build_shapes(EngineSettings(), None, torch.device("cpu"))] == ["plain"]
