"""Tree attention on CPU (VIRTUAL_ROWS) rounds like plain decoding: a tree node's hidden state is bit-identical to
the plain step's at the same position, in bf16, whichever sibling it is (engine/attention.py).

With one masked window instead (MASKED_CALL, the CUDA path), the real model's attention rounded differently for 5
of 2,040 node outputs (captured tree steps, SmolLM2 bf16) — too rare for a random model to show in a fast test, so
the tests here check that the per-node key order reproduces the plain computation bit for bit, the slot
bookkeeping, and that either attention computes each node's text as float64 does."""

from __future__ import annotations

import pytest
import torch
from engine_tiny import VOCAB, as_the_cpu_engine_runs_it, empty_cache, smollm2_shaped_llama
from transformers import LlamaForCausalLM

from gorgon.engine.attention import (
    VerificationAttention,
    gather_per_node,
    node_key_slots,
    use_row_attention,
)
from gorgon.engine.forward import forward_tokens
from gorgon.engine.kv import RowKVCache
from gorgon.engine.parts import ModelParts
from gorgon.engine.tree import CPU_TREE_12, build_tree_buffers, sorted_choices

SIBLINGS_TREE = ((0,), (1,), (2,), (0, 0), (1, 0))  # nodes: root, (0,), (1,), (2,), (0, 0), (1, 0)
NODE_OF_SECOND_SIBLING = 2
NODE_OF_ITS_CHILD = 5


@pytest.fixture(scope="module")
def bf16_model() -> LlamaForCausalLM:
    model = smollm2_shaped_llama(torch.bfloat16)
    use_row_attention(model)
    return model


def _cache(model, capacity: int = 128) -> RowKVCache:
    return empty_cache(model, 1, capacity)


def _plain_forward(parts: ModelParts, cache: RowKVCache, token: int) -> torch.Tensor:
    """Feed one token padded to two rows, as the engine's batch-1 plain step does. -> hidden [H]."""
    chain_of_two = torch.ones(2, 2, dtype=torch.bool).tril()
    hidden = forward_tokens(
        parts, cache, torch.tensor([[token, token]]), torch.arange(2), chain_of_two, exact_queries=2
    )
    cache.advance(1)
    return hidden[0, 0]


def _tree_hidden(parts, cache, tokens, *, per_node_order: bool) -> torch.Tensor:
    tree = build_tree_buffers(SIBLINGS_TREE)
    ancestors = tree.ancestors if per_node_order else None
    hidden = forward_tokens(
        parts, cache, torch.tensor([tokens]), tree.depths, tree.attention_mask, ancestors=ancestors
    )
    return hidden[0]


def _engine_parts(model) -> ModelParts:
    """The decoder and lm_head as the CPU engine runs them: packed where oneDNN packs bf16 (unpacked bf16 products
    round rows by row count on a Skylake Xeon without AVX512_BF16, which no attention order can undo)."""
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    return ModelParts(
        as_the_cpu_engine_runs_it(decoder, torch.bfloat16),
        as_the_cpu_engine_runs_it(lm_head, torch.bfloat16),
        None,
    )


def _mismatches(model, *, per_node_order: bool) -> int:
    """Decode 30 tokens plainly; at each step, forward a tree whose second sibling and its child hold the true
    next two tokens; count positions where their hidden states differ from the plain ones."""
    parts = _engine_parts(model)
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, VOCAB - 2, (52,), generator=generator).tolist()
    cache = _cache(model)
    for token in text[:20]:
        _plain_forward(parts, cache, token)
    mismatches = 0
    for step in range(20, 50):
        # nodes: root = the true token, (0,) and (2,) wrong, (1,) and (1, 0) the true next two, (0, 0) wrong
        t0, t1, t2 = text[step : step + 3]
        tokens = [t0, t1 + 1, t1, t1 + 2, t2 + 1, t2]
        hidden = _tree_hidden(
            parts, cache.select_rows(torch.tensor([0])), tokens, per_node_order=per_node_order
        )
        truth = [_plain_hidden_at(parts, cache, t0, t1), _plain_hidden_at(parts, cache, t0, t1, t2)]
        mismatches += not torch.equal(hidden[NODE_OF_SECOND_SIBLING], truth[0])
        mismatches += not torch.equal(hidden[NODE_OF_ITS_CHILD], truth[1])
        _plain_forward(parts, cache, t0)
    return mismatches


def _plain_hidden_at(parts, cache, *tokens: int) -> torch.Tensor:
    scratch = cache.select_rows(torch.tensor([0]))
    for token in tokens:
        hidden = _plain_forward(parts, scratch, token)
    return hidden


def test_tree_nodes_round_like_plain_steps_in_bf16(bf16_model) -> None:
    assert _mismatches(bf16_model, per_node_order=True) == 0


def test_node_key_slots_follow_each_nodes_path() -> None:
    tree = build_tree_buffers(SIBLINGS_TREE)
    lengths = torch.tensor([3, 1])
    key_slots, mask = node_key_slots(lengths, tree.ancestors, tree.depths, window=12)
    # row 0 (3 accepted slots): node (1, 0) sees slots 0..2, the root (slot 3), (1,) (slot 5), itself (slot 8)
    assert key_slots[0, NODE_OF_ITS_CHILD, :6].tolist() == [0, 1, 2, 3, 5, 8]
    assert mask.reshape(2, 6, 12)[0, NODE_OF_ITS_CHILD].tolist() == [True] * 6 + [False] * 6
    # row 1 (1 accepted slot): node (2,) sees slot 0, the root (slot 1), itself (slot 1 + 3)
    assert key_slots[1, 3, :3].tolist() == [0, 1, 4]
    assert mask.reshape(2, 6, 12)[1, 3].sum() == 3
    states = torch.arange(2 * 12, dtype=torch.float32).reshape(2, 1, 12, 1)
    gathered = gather_per_node(states, key_slots).reshape(2, 6, 12)
    assert gathered[1, 3, :3].tolist() == [12.0, 13.0, 16.0]


def _prefilled(parts: ModelParts, model, text: list[int]) -> RowKVCache:
    """A one-row cache holding `text`, prefilled as the engine prefills a prompt."""
    cache = empty_cache(model, 1, 128)
    causal = torch.ones(len(text), len(text), dtype=torch.bool).tril()
    forward_tokens(parts, cache, torch.tensor([text]), torch.arange(len(text)), causal)
    cache.advance(len(text))
    return cache


@pytest.mark.parametrize("verification", list(VerificationAttention))
def test_tree_nodes_compute_the_hidden_state_of_their_text_in_float64(verification) -> None:
    """Either verification attention gives every node of a branching tree, in rows of different lengths, the
    hidden state of its row's text followed by its root path, as transformers computes that text in float64 with
    the same weights, without a cache. The model runs in float32: tolerance 1e-4 absolute on hidden states of
    scale 1 (after the final norm)."""
    model = smollm2_shaped_llama(torch.float32)
    reference = smollm2_shaped_llama(torch.float64)
    parts = ModelParts(model.get_decoder(), model.get_output_embeddings(), None)
    generator = torch.Generator().manual_seed(7)
    texts = [torch.randint(0, VOCAB, (length,), generator=generator).tolist() for length in (30, 17)]
    cache = RowKVCache.concatenate([_prefilled(parts, model, text) for text in texts])
    tree = build_tree_buffers(CPU_TREE_12)
    tokens = torch.randint(0, VOCAB, (2, tree.num_nodes), generator=generator)
    hidden = forward_tokens(
        parts,
        cache,
        tokens,
        tree.depths,
        tree.attention_mask,
        ancestors=tree.ancestors,
        exact_queries=tree.num_nodes,
        verification=verification,
    )
    paths = [(), *sorted_choices(CPU_TREE_12)]
    node_of = {path: node for node, path in enumerate(paths)}
    for row, text in enumerate(texts):
        for node, path in enumerate(paths):
            path_tokens = [int(tokens[row, node_of[path[:depth]]]) for depth in range(len(path) + 1)]
            expected = reference.model(torch.tensor([text + path_tokens])).last_hidden_state[0, -1]
            assert torch.allclose(hidden[row, node].double(), expected, atol=1e-4), (row, node)
