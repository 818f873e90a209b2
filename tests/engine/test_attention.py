"""Decode-step attention (engine/attention.py): a query that a step may emit rounds the same whatever shares its
call (other queries, other rows, a tree's virtual rows). Shapes are SmolLM2's (9 query heads over 3 KV heads, head
dimension 64), values random at its scale; on an AVX2-only AMD EPYC about 1 in 100 such draws rounded query 0 of
a 5-query SDPA call differently from the same query in a 2-query call, and on a Zen 4 EPYC float32 SDPA rounded
nearly every query of a many-row call differently from a 2-row call: the checks run in both dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gorgon.engine.attention import _sdpa_virtual_rows, row_attention

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


def test_the_sdpa_path_of_other_devices_computes_the_same_attention() -> None:
    """Off CPU (CUDA) the exact queries run through SDPA as virtual rows; checked here on CPU tensors, since
    no GPU is at hand, against the same float64 reference."""
    generator = torch.Generator().manual_seed(5)
    query, key, value, mask = _draw(generator, 3, 4, torch.float32)
    got = _sdpa_virtual_rows(query, key, value, mask, DIM**-0.5)
    assert torch.allclose(got.double(), _reference(query, key, value, mask), atol=1e-5)
