"""The per-row KV cache: what it allocates and how much of it holds tokens."""

from __future__ import annotations

import torch

from gorgon.engine.kv import RowKVCache


def test_usage_is_the_bytes_allocated_and_the_share_of_slots_holding_tokens() -> None:
    layers, rows, kv_heads, capacity, head_dim = 2, 3, 4, 16, 8
    cache = RowKVCache.allocate(
        num_layers=layers,
        batch=rows,
        kv_heads=kv_heads,
        head_dim=head_dim,
        capacity=capacity,
        dtype=torch.float16,
        device=torch.device("cpu"),
    )
    cache.lengths[:] = torch.tensor([4, 8, 12])
    usage = cache.usage()
    assert (
        usage.allocated_bytes == layers * 2 * rows * kv_heads * capacity * head_dim * 2
    )  # keys + values, fp16
    assert usage.used_fraction == (4 + 8 + 12) / (rows * capacity)
