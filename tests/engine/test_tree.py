"""Tree buffers against hand-worked trees."""

from __future__ import annotations

import pytest
import torch

from gorgon.engine.tree import MC_SIM_7B_63, build_tree_buffers, chain


def test_two_siblings_and_a_grandchild() -> None:
    # nodes: 0 root, 1 = (0,), 2 = (1,), 3 = (0, 0)
    tree = build_tree_buffers([(0, 0), (1,), (0,)])
    assert tree.choices == ((0,), (1,), (0, 0))
    assert tree.attention_mask.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, False, True, False],
        [True, True, False, True],
    ]
    # flat candidates: [root, head0 rank0, head0 rank1, head1 rank0, head1 rank1]
    assert tree.tree_indices.tolist() == [0, 1, 2, 3]
    assert tree.depths.tolist() == [0, 1, 1, 2]
    assert tree.parents.tolist() == [0, 0, 0, 1]
    assert tree.retrieve_indices.tolist() == [[0, 2, -1], [0, 1, 3]]
    assert tree.topk == 2


def test_deeper_ranks_index_the_right_head() -> None:
    # topk 3: (2,) -> 1 + 2; (0, 1) -> 1 + 3 + 1; (0, 1, 0) -> 1 + 6 + 0
    tree = build_tree_buffers([(0,), (2,), (0, 1), (0, 1, 0)])
    assert tree.tree_indices.tolist() == [0, 1, 3, 5, 7]
    assert tree.retrieve_indices.tolist() == [[0, 2, -1, -1], [0, 1, 3, 4]]


def test_chain_is_a_single_path() -> None:
    tree = build_tree_buffers(chain(3))
    assert tree.num_nodes == 4
    assert torch.equal(tree.attention_mask, torch.ones(4, 4, dtype=torch.bool).tril())
    assert tree.retrieve_indices.tolist() == [[0, 1, 2, 3]]


def test_plain_tree_is_the_root_only() -> None:
    tree = build_tree_buffers(())
    assert tree.num_nodes == 1
    assert tree.retrieve_indices.tolist() == [[0]]


def test_missing_parent_is_rejected() -> None:
    with pytest.raises(ValueError, match="lacks its parent"):
        build_tree_buffers([(0,), (1, 0)])


def test_vicuna_tree_shape() -> None:
    full = build_tree_buffers(MC_SIM_7B_63, name="mc_sim_7b_63")
    assert full.num_nodes == len(MC_SIM_7B_63) + 1 == 64
    assert full.topk == 10
    assert full.max_depth == 4
