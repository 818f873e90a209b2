"""Attention on CPU for the queries a decode step may emit: each query alone, in float32 products of one shape.

PyTorch's CPU SDPA kernel rounds a query by what shares its call: on AVX2-only CPUs a bf16 query of a 4- or
5-query call rounds otherwise than the same query in a call of 1 to 3 queries, on AVX512_BF16 CPUs a float32
query of a many-row call otherwise than in a 2-row call, and transformers' single-query path (which folds the
query heads of a KV head into queries) rounds a 1-row call otherwise than the same row in a batch. Greedy
speculative decoding then drifts from plain decoding at near-ties. The products here have one fixed shape per row
and KV head, whatever the batch, the step's shape or the thread count, so a query rounds the same alone, in a
batch, a chain or a tree (tests/engine/test_attention.py); at decode sizes they also cost less than bf16 SDPA.
"""

from __future__ import annotations

import torch


def exact_queries_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """query [B, H, Q, D], key / value [B, KV, W, D] float32, mask [B, 1, Q or 1, W] bool or None -> [B, Q, H, D]
    in query's dtype; every query as a virtual row of one query.

    float32 products of one fixed shape, one query at a time: per row and KV head, the [G, D] queries of that
    head's group times the [D, W] keys, G = H / KV, then the [G, W] weights times the [W, D] values. A product's
    shape depends neither on the batch nor on how many queries the step holds, so a query's scores, softmax and
    weighted sum round the same alone, in a batch, a chain or a tree. Queries, keys and the mask's bias are laid
    out once so that each query's products read views."""
    batch, heads, queries, dim = query.shape
    kv_heads, window = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = dim**-0.5 if scale is None else scale
    per_query = torch.empty((queries, batch, heads, dim), dtype=torch.float32, device=query.device)
    per_query.copy_(query.permute(2, 0, 1, 3))  # [Q, B, H, D]: one copy, whatever query's dtype and strides
    keys = key.reshape(batch * kv_heads, window, dim).transpose(1, 2)
    values = value.reshape(batch * kv_heads, window, dim)
    bias = None if mask is None else _mask_bias(mask, queries, kv_heads)  # [Q, B, KV, 1, W]
    outputs = []
    for node in range(queries):
        node_queries = per_query[node].view(batch * kv_heads, group, dim)
        if bias is None:
            scores = torch.bmm(node_queries, keys).mul_(scale)
        else:
            node_bias = bias[node].view(batch * kv_heads, 1, window)
            scores = torch.baddbmm(node_bias, node_queries, keys, alpha=scale)
        outputs.append(torch.bmm(scores.softmax(-1), values).view(batch, heads, dim))
    return torch.stack(outputs, dim=1).to(query.dtype)


def _mask_bias(mask: torch.Tensor, queries: int, kv_heads: int) -> torch.Tensor:
    """mask [B, 1, Q or 1, W] bool -> additive float32 bias [Q, B, KV, 1, W] (0 seen, -inf hidden)."""
    batch, window = mask.shape[0], mask.shape[-1]
    hidden = ~mask.expand(batch, 1, queries, window).permute(2, 0, 1, 3)[:, :, :, None]  # [Q, B, 1, 1, W]
    bias = torch.zeros((queries, batch, kv_heads, 1, window), dtype=torch.float32, device=mask.device)
    return bias.masked_fill_(hidden, -torch.inf)


def grouped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """query [B, H, Q, D], key / value [B, KV, W, D] float32, mask [B, 1, Q or 1, W] bool -> [B, Q, H, D]: the
    Q queries of each KV head's group in one float32 product (not exact: rounding may depend on Q). For queries
    a step never emits (lookahead leaves)."""
    batch, heads, queries, dim = query.shape
    kv_heads, window = key.shape[1], key.shape[2]
    group = heads // kv_heads
    folded = query.reshape(batch, kv_heads, group * queries, dim).float()  # per KV head: (g, q) row-major
    scale = dim**-0.5 if scale is None else scale
    scores = torch.matmul(folded, key.transpose(2, 3)).mul_(scale)  # [B, KV, G * Q, W]
    if mask is not None:
        visible = mask.expand(batch, 1, queries, window)[:, :, None].expand(batch, 1, group, queries, window)
        scores.masked_fill_(~visible.reshape(batch, 1, group * queries, window), -torch.inf)
    output = torch.matmul(scores.softmax(-1), value)  # [B, KV, G * Q, D]
    return output.reshape(batch, heads, queries, dim).transpose(1, 2).to(query.dtype)
