"""The base model's forward: logits of a single row round as the row does inside a batch."""

from __future__ import annotations

import torch
from engine_tiny import as_the_cpu_engine_runs_it

from gorgon.engine.forward import row_logits


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
