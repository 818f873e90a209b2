"""Decode-step attention (engine/attention.py): a query that a step may emit rounds the same whatever shares its
call (other queries, other rows, a tree's virtual rows). Shapes are SmolLM2's (9 query heads over 3 KV heads, head
dimension 64), values random at its scale; on an AVX2-only AMD EPYC about 1 in 100 such draws rounded query 0 of
a 5-query SDPA call differently from the same query in a 2-query call, and on a Zen 4 EPYC float32 SDPA rounded
nearly every query of a many-row call differently from a 2-row call: the checks run in both dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gorgon.engine.attention import VerificationAttention, row_attention, verification_attention
from gorgon.engine.forward import _attention_inputs
from gorgon.engine.tree import MC_SIM_7B_63, build_tree_buffers, sorted_choices

HEADS, KV_HEADS, DIM, WINDOW, VISIBLE = 9, 3, 64, 64, 40
TRIALS = 200


class _Attention(nn.Module):
    """What transformers' attention functions read off a Llama attention module."""

    num_key_value_groups = HEADS // KV_HEADS
    is_causal = True
    layer_idx = 0


DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])


def _draw(
    generator: torch.Generator, rows: int, queries: int, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, ...]:
    def normal(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    query = normal(rows, HEADS, queries, DIM, scale=3.0)
    key = normal(rows, KV_HEADS, WINDOW, DIM, scale=3.0)
    value = normal(rows, KV_HEADS, WINDOW, DIM, scale=1.0)
    mask = torch.zeros(rows, 1, queries, WINDOW, dtype=torch.bool)
    for node in range(queries):
        mask[:, :, node, : VISIBLE + node + 1] = True
    return query, key, value, mask


def _attend(query, key, value, mask, **kwargs) -> torch.Tensor:
    return row_attention(_Attention(), query, key, value, mask, scaling=DIM**-0.5, **kwargs)[0]


@DTYPES
def test_a_chain_query_rounds_as_it_does_alone_in_a_plain_step(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(TRIALS):
        query, key, value, mask = _draw(generator, 1, 5, dtype)
        chain = _attend(query, key, value, mask, exact_queries=5)  # [1, 5, H, D]
        for node in range(5):
            alone = _attend(
                query[:, :, node : node + 1], key, value, mask[:, :, node : node + 1], exact_queries=1
            )
            assert torch.equal(chain[:, node], alone[:, 0])


@DTYPES
def test_a_rows_query_rounds_the_same_alone_and_in_a_batch(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(TRIALS // 4):
        query, key, value, mask = _draw(generator, 8, 1, dtype)
        batch = _attend(query, key, value, mask, exact_queries=1)
        for row in range(8):
            alone = _attend(*(tensor[row : row + 1] for tensor in (query, key, value, mask)), exact_queries=1)
            assert torch.equal(batch[row], alone[0])


@DTYPES
def test_a_tree_node_rounds_as_the_chain_query_at_its_position(dtype: torch.dtype) -> None:
    """A branching tree's nodes attend as virtual rows over gathered keys: with the keys a chain would see, node
    d of the chain and the virtual row of the node at depth d must agree exactly."""
    generator = torch.Generator().manual_seed(2)
    for _ in range(TRIALS // 4):
        query, key, value, mask = _draw(generator, 1, 4, dtype)
        chain = _attend(query, key, value, mask, exact_queries=4)
        slots = torch.arange(WINDOW).expand(1, 4, -1)
        node_mask = mask.permute(0, 2, 1, 3).reshape(4, 1, 1, WINDOW)
        tree = _attend(query, key, value, node_mask, key_slots=slots)
        assert torch.equal(tree, chain)


def test_only_the_exact_queries_are_split_off() -> None:
    """Lookahead leaves share one call after the chain's queries; every query still gets its own output."""
    generator = torch.Generator().manual_seed(3)
    query, key, value, mask = _draw(generator, 2, 6)
    split = _attend(query, key, value, mask, exact_queries=2)
    alone = torch.cat(
        [
            _attend(query[:, :, n : n + 1], key, value, mask[:, :, n : n + 1], exact_queries=1)
            for n in range(6)
        ],
        dim=1,
    )
    assert split.shape == (2, 6, HEADS, DIM)
    assert torch.equal(split[:, :2], alone[:, :2])
    assert torch.allclose(split[:, 2:].float(), alone[:, 2:].float(), atol=2e-2)


def _reference(query, key, value, mask) -> torch.Tensor:
    """Attention in float64, each query head over its KV head (transformers' repeat_kv pairing) -> [B, T, H, D]."""
    keys = key.double().repeat_interleave(HEADS // KV_HEADS, dim=1)
    values = value.double().repeat_interleave(HEADS // KV_HEADS, dim=1)
    scores = (query.double() @ keys.transpose(2, 3)) * DIM**-0.5
    weights = scores.masked_fill(~mask, -torch.inf).softmax(-1)
    return (weights @ values).transpose(1, 2)


@DTYPES
def test_exact_queries_and_leaves_compute_attention(dtype: torch.dtype) -> None:
    """Whatever the split, every query's output is the attention it asks for (heads paired with their KV head,
    masked slots unseen), up to the dtype's rounding."""
    generator = torch.Generator().manual_seed(4)
    query, key, value, mask = _draw(generator, 3, 6, dtype)
    tolerance = 2e-2 if dtype is torch.bfloat16 else 1e-5
    expected = _reference(query, key, value, mask)
    for exact in (1, 3, 6):
        got = _attend(query, key, value, mask, exact_queries=exact)
        assert got.dtype == dtype
        assert torch.allclose(got.double(), expected, atol=tolerance), exact


def test_the_verification_attention_is_chosen_by_device() -> None:
    assert verification_attention(torch.device("cpu")) is VerificationAttention.VIRTUAL_ROWS
    assert verification_attention(torch.device("cuda")) is VerificationAttention.MASKED_CALL


def _paths_visibility(choices, lengths: list[int], window: int) -> torch.Tensor:
    """[B, 1, T, W] bool from a tree's paths alone: node i of row b sees the row's accepted slots and the slot
    (lengths[b] + node index) of every node on its root path, itself included."""
    paths = [(), *sorted_choices(choices)]
    node_of = {path: node for node, path in enumerate(paths)}
    visible = torch.zeros(len(lengths), 1, len(paths), window, dtype=torch.bool)
    for row, length in enumerate(lengths):
        visible[row, :, :, :length] = True
        for node, path in enumerate(paths):
            for depth in range(len(path) + 1):
                visible[row, 0, node, length + node_of[path[:depth]]] = True
    return visible


TREE_TOLERANCES = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 4e-5}


@pytest.mark.parametrize("verification", list(VerificationAttention))
@pytest.mark.parametrize("dtype", list(TREE_TOLERANCES))
def test_a_branching_tree_step_computes_attention_over_each_nodes_path(
    verification: VerificationAttention, dtype: torch.dtype
) -> None:
    """The 64 nodes of mc_sim_7b_63 over three rows of different lengths, with the mask and options each
    verification attention passes (MASKED_CALL: one SDPA call under the slot-order tree mask; VIRTUAL_ROWS: keys
    gathered per node), against float64 attention over each node's accepted slots and root path. Tolerances are
    absolute on outputs of scale 1 (values drawn with standard deviation 1, scores up to about 40): 2e-2 in
    bfloat16 (8 significant bits), 4e-3 in float16 (11), 4e-5 in float32 (24), each 2 to 5 times the largest
    deviation of either path; a chain's mask in place of the tree's moves outputs by more than 5."""
    generator = torch.Generator().manual_seed(6)
    tree = build_tree_buffers(MC_SIM_7B_63)
    lengths, window = [40, 7, 64], 128
    mask, options = _attention_inputs(
        verification,
        torch.tensor(lengths),
        tree.attention_mask,
        tree.depths,
        window,
        ancestors=tree.ancestors,
        exact_queries=tree.num_nodes,
    )
    query = (torch.randn(3, HEADS, tree.num_nodes, DIM, generator=generator) * 3.0).to(dtype)
    key = (torch.randn(3, KV_HEADS, window, DIM, generator=generator) * 3.0).to(dtype)
    value = torch.randn(3, KV_HEADS, window, DIM, generator=generator).to(dtype)
    got = _attend(query, key, value, mask, **options)
    expected = _reference(query, key, value, _paths_visibility(MC_SIM_7B_63, lengths, window))
    assert got.dtype == dtype
    assert torch.allclose(got.double(), expected, atol=TREE_TOLERANCES[dtype])
