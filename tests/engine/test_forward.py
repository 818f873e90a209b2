"""The base model's forward: logits of a single row round as the row does inside a batch."""

from __future__ import annotations

import pytest
import torch
from engine_tiny import as_the_cpu_engine_runs_it

from gorgon.engine.attention import node_key_slots
from gorgon.engine.forward import attention_mask, row_logits
from gorgon.engine.tree import CPU_TREE_12, MC_SIM_7B_63, build_tree_buffers


def test_single_row_logits_match_the_row_inside_a_batch() -> None:
    """oneDNN's bf16 matrix-vector product rounds differently from the matrix-matrix one now and then; the
    engine pads single rows so greedy decoding alone matches decoding in a batch or a tree. Seed 23 is a case
    where the unpadded product differs on AVX-512 CPUs without AMX (with AMX both products agree here). The
    lm_head is the engine's CPU copy (packed where oneDNN packs bf16): on a Skylake Xeon without AVX512_BF16,
    unpacked bf16 products of 4 or more rows round row 0 unlike the 2-row product, packed ones do not."""
    generator = torch.Generator().manual_seed(23)
    linear = torch.nn.Linear(1536, 576, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(576, 1536, generator=generator) / 40)
        gate = torch.randn(4, 1536, generator=generator)
        rows = (torch.nn.functional.silu(gate) * torch.randn(4, 1536, generator=generator) * 3).to(
            torch.bfloat16
        )
        lm_head = as_the_cpu_engine_runs_it(linear, torch.bfloat16)
        in_batch = lm_head(rows)[:1]
        assert torch.equal(row_logits(lm_head, rows[:1]), in_batch)


@pytest.mark.parametrize("choices", [CPU_TREE_12, MC_SIM_7B_63])
def test_the_slot_order_mask_shows_each_node_the_keys_its_gathered_path_holds(choices) -> None:
    """The two verification attentions see the same keys: MASKED_CALL's mask in slot order (attention_mask) and
    the slots VIRTUAL_ROWS gathers per node in plain-decoding order (node_key_slots), over rows of different
    lengths."""
    tree = build_tree_buffers(choices)
    lengths, window = torch.tensor([0, 5, 30]), 96
    slot_order = attention_mask(lengths, tree.attention_mask, window)[:, 0]  # [B, T, W]
    key_slots, gathered = node_key_slots(lengths, tree.ancestors, tree.depths, window)
    gathered = gathered.reshape(3, tree.num_nodes, window)
    for row in range(3):
        for node in range(tree.num_nodes):
            path_slots = key_slots[row, node][gathered[row, node]]
            assert path_slots.tolist() == sorted(path_slots.tolist())
            assert slot_order[row, node].nonzero()[:, 0].tolist() == path_slots.tolist()
