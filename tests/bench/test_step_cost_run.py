"""`gorgon bench step-cost`'s measuring: the trees it times, the contexts it times them after, and timing them on
a tiny engine with the peak memory of the steps."""

from __future__ import annotations

import argparse

import pytest

from gorgon.bench.prompts import BENCH_PROMPTS
from gorgon.bench.step_cost_memory import PROCESS_PEAK_RSS, PeakMemory
from gorgon.bench.step_cost_run import (
    _step_timing,
    _time_points,
    context_prompt,
    ranked_tree_of,
    spine_tree_of,
    tree_of_size,
)
from gorgon.core.errors import ConfigurationError
from gorgon.engine.medusa_engine import MedusaEngine
from gorgon.engine.tree import MC_SIM_7B_63


@pytest.mark.parametrize("nodes", [2, 4, 5, 6, 12, 41])
def test_spine_trees_of_every_size_are_lookahead_trees_over_all_heads(nodes: int) -> None:
    tree = spine_tree_of(nodes, num_heads=4)
    assert tree.num_nodes == nodes
    assert tree.spine_nodes == min(nodes, 5)
    assert tree.lookahead
    assert all(not any(path[:-1]) for path in tree.choices)


def test_one_node_is_plain_decoding_and_too_many_nodes_are_refused() -> None:
    assert spine_tree_of(1, num_heads=4).num_nodes == 1
    with pytest.raises(ConfigurationError, match="at most 41 nodes"):
        spine_tree_of(42, num_heads=4)


@pytest.mark.parametrize("nodes", [2, 20, 64, 200])
def test_ranked_trees_are_standard_medusa_trees_of_the_size_asked_for(nodes: int) -> None:
    tree = ranked_tree_of(nodes, num_heads=5)
    assert tree.num_nodes == nodes and not tree.lookahead
    assert tree.max_depth <= 5 and max(max(path) for path in tree.choices) < 10
    assert len(set(tree.choices)) == nodes - 1


def test_a_ranked_tree_of_mc_sim_7b_63s_size_takes_its_likeliest_paths() -> None:
    """Rank sums up to 2 over four heads: the root's 1 + 4 + 10 + 20 nodes, then 29 of rank sum 3."""
    tree = ranked_tree_of(len(MC_SIM_7B_63) + 1, num_heads=4)
    assert tree.num_nodes == 64
    sums = sorted(sum(path) for path in tree.choices)
    assert sums.count(0) == 4 and sums.count(1) == 10 and sums.count(2) == 20 and sums[-1] == 3


def test_sizes_past_a_spine_tree_run_as_ranked_trees_unless_the_heads_are_recurrent() -> None:
    assert tree_of_size(16, num_heads=3, recurrent=False).name == "spine_16"
    assert tree_of_size(64, num_heads=5, recurrent=False).name == "ranked_64"
    assert tree_of_size(31, num_heads=3, recurrent=True).name == "spine_31"
    with pytest.raises(ConfigurationError, match="at most 31 nodes"):
        tree_of_size(64, num_heads=3, recurrent=True)
    with pytest.raises(ConfigurationError, match="at most 111 nodes"):
        tree_of_size(112, num_heads=2, recurrent=False)


@pytest.mark.parametrize("tokens", [1, 7, 2000])
def test_a_context_prompt_is_the_bench_text_repeated_to_the_tokens_asked_for(
    cycling_engine: MedusaEngine, tokens: int
) -> None:
    text_ids = cycling_engine.encode("\n".join(BENCH_PROMPTS))
    assert len(text_ids) < 2000
    assert context_prompt(cycling_engine, tokens) == (text_ids * 10)[:tokens]


@pytest.mark.parametrize("nodes", [1, 4])
def test_a_tree_size_is_timed_over_the_steps_asked_for(cycling_engine: MedusaEngine, nodes: int) -> None:
    tree = spine_tree_of(nodes, num_heads=3)
    memory = PeakMemory(cycling_engine.layout.device)
    timing = _step_timing(cycling_engine, [5, 6, 7], tree, steps=3, memory=memory)
    assert len(timing.seconds) == 3 and all(seconds > 0 for seconds in timing.seconds)
    assert memory.kind == PROCESS_PEAK_RSS and timing.peak_bytes > 0


def test_every_context_and_size_is_timed_in_every_round(cycling_engine: MedusaEngine) -> None:
    prompts = {tokens: context_prompt(cycling_engine, tokens) for tokens in (8, 40)}
    trees = {nodes: spine_tree_of(nodes, num_heads=3) for nodes in (1, 4)}
    args = argparse.Namespace(rounds=2, steps=2)
    timings = _time_points(cycling_engine, prompts, trees, args, PeakMemory(cycling_engine.layout.device))
    assert list(timings) == [(8, 1), (8, 4), (40, 1), (40, 4)]
    assert all(len(timing.seconds) == 4 and timing.peak_bytes > 0 for timing in timings.values())
