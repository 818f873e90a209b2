"""`gorgon bench step-cost`: the trees it times and its argument checks."""

from __future__ import annotations

import pytest

from gorgon.core.errors import ConfigurationError
from gorgon.engine.step_cost import _sizes
from gorgon.engine.step_cost_runner import spine_tree_of


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


@pytest.mark.parametrize("text", ["", "0,4", "a,b"])
def test_bad_sizes_are_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--nodes"):
        _sizes(text)
