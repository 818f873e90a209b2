"""`gorgon bench step-cost`'s measuring: the trees it times, and timing one on a tiny engine."""

from __future__ import annotations

import pytest

from gorgon.bench.step_cost_run import _step_seconds, spine_tree_of
from gorgon.core.errors import ConfigurationError
from gorgon.engine.medusa_engine import MedusaEngine


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


@pytest.mark.parametrize("nodes", [1, 4])
def test_a_tree_size_is_timed_over_the_steps_asked_for(cycling_engine: MedusaEngine, nodes: int) -> None:
    tree = spine_tree_of(nodes, num_heads=3)
    durations = _step_seconds(cycling_engine, [5, 6, 7], tree, steps=3)
    assert len(durations) == 3 and all(seconds > 0 for seconds in durations)
