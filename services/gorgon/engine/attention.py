"""Tree attention that rounds exactly like plain decoding.

A tree forward writes its nodes at consecutive slots past a row's accepted tokens, so a node's root path is not
contiguous in the cache: node (1,) of a tree sits at slot L + 2 although it is the token at position L + 1. Masking
the slots in between gives the same mathematical attention, but not the same bf16 rounding: the kernels sum keys
in slot order, in pairs and SIMD lanes by slot index, so a key one slot further moves the rounding of the sum
(measured on SmolLM2 bf16: the attention output of every accepted non-first sibling differed from the plain
step's, and greedy output drifted at near-ties). Here each tree node becomes a virtual row whose keys are
gathered in the order plain decoding stores them (the row's accepted slots, then the node's ancestors, then the
node), so every accepted node computes what the plain step computes at its position.

A query's output can also depend on what shares its call. On an AVX2-only AMD EPYC (no AVX-512), 2 threads,
PyTorch's CPU SDPA kernel rounds bf16 query 0 of a 4- or 5-query call differently from the same query in a 1- to
3-query call, and transformers' single-query path (which folds the 3 query heads of a KV head into 3 queries)
rounds a 1-row call differently from the same row in a batch of 2 or more; both with identical q, k, v and visible
mask (measured 2026-12-01 on SmolLM2: on bench prompt 0 greedy Medusa drifted from plain decoding at token 14;
the batch effect showed in captured layer inputs, not yet in the bench's outputs). So every query a decode step may emit
is computed the same way, whatever the batch, the shape or the thread count: one query per (virtual) row, all
query heads, keys shared across heads by SDPA's `enable_gqa` (`single_query_attention`), all of a step's such
queries in one call as virtual rows over per-row copies of the keys (one call per layer instead of one per
query: the 5-node chain step 99.2 -> 88.8 ms, plain 72.2 -> 66.4 ms, fp32, same CPU). A plain step passes
`exact_queries` = its query count, a chain its nodes, a lookahead tree its chain (its leaves, never emitted,
share a second call), a branching tree its nodes as virtual rows over gathered keys.

`ModelParts` switches the model to this attention function (`use_row_attention`); without `key_slots` or
`exact_queries` it is transformers' SDPA attention unchanged, so HF `generate` on the same model computes as before.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ROW_ATTENTION = "gorgon_row_attention"


def row_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    key_slots: torch.Tensor | None = None,
    exact_queries: int = 0,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA attention; with key_slots [B, T, W], query t of row b attends to the slots key_slots[b, t] in order;
    else the first `exact_queries` queries as virtual rows of one query (see the module docstring).

    query: [B, H, T, D], key / value: [B, KV, W, D]; with key_slots the mask is per virtual row, [B * T, 1, 1, W].
    Returns the attention output [B, T, H, D].
    """
    scale = kwargs.get("scaling")
    if key_slots is not None:
        batch, heads, nodes, dim = query.shape
        node_queries = query.transpose(1, 2).reshape(batch * nodes, heads, 1, dim)
        output = single_query_attention(
            node_queries,
            gather_per_node(key, key_slots),
            gather_per_node(value, key_slots),
            attention_mask,
            scale,
        )
        return output.reshape(batch, nodes, heads, dim), None
    if exact_queries:
        return _exact_queries_as_rows(query, key, value, attention_mask, exact_queries, scale)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def single_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """query [N, H, Q, D], key / value [N, KV, W, D], mask [N, 1, Q, W] bool -> [N, Q, H, D]; KV may divide H.
    Exact (rounding as in a plain step) for Q = 1, which is how the engine calls it for queries it may emit."""
    output = nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scale, enable_gqa=key.shape[1] != query.shape[1]
    )
    return output.transpose(1, 2)


def _exact_queries_as_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    exact_queries: int,
    scale: float | None,
) -> tuple[torch.Tensor, None]:
    """Queries 0 .. exact_queries - 1 as virtual rows of one query each (one single_query_attention call over
    per-row copies of the keys), the rest (if any, never emitted) in a second call, keys shared across each
    group of query heads by SDPA's `enable_gqa` instead of copied per query head as transformers' `repeat_kv`
    does; outputs [B, T, H, D]."""
    batch, heads, nodes, dim = query.shape
    alone = min(exact_queries, nodes)
    rows_mask = _query_rows(mask, 0, alone)
    if rows_mask is not None:
        rows_mask = rows_mask.expand(batch, 1, alone, -1).reshape(batch * alone, 1, 1, -1)
    outputs = [
        single_query_attention(
            query[:, :, :alone].transpose(1, 2).reshape(batch * alone, heads, 1, dim),
            _per_virtual_row(key, alone),
            _per_virtual_row(value, alone),
            rows_mask,
            scale,
        ).reshape(batch, alone, heads, dim)
    ]
    if alone < nodes:  # never emitted (lookahead leaves): their rounding only reaches the drafts they make
        rest = _query_rows(mask, alone, nodes)
        outputs.append(single_query_attention(query[:, :, alone:], key, value, rest, scale))
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0], None


def _per_virtual_row(states: torch.Tensor, queries: int) -> torch.Tensor:
    """states [B, KV, W, D] -> [B * queries, KV, W, D], row b repeated `queries` times (a view for one query)."""
    batch, kv_heads, window, dim = states.shape
    return states[:, None].expand(batch, queries, kv_heads, window, dim).reshape(-1, kv_heads, window, dim)


def _query_rows(mask: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
    """The mask rows of queries start .. end - 1 ([B, 1, T, W]; a mask broadcast over queries is kept)."""
    if mask is None or mask.shape[2] == 1:
        return mask
    return mask[:, :, start:end]


def gather_per_node(states: torch.Tensor, key_slots: torch.Tensor) -> torch.Tensor:
    """states [B, KV, W, D], key_slots [B, T, W] -> [B * T, KV, W, D], row (b, t) = states[b][:, key_slots[b, t]]."""
    batch, kv_heads, window, dim = states.shape
    rows = torch.arange(batch, device=states.device)[:, None, None]
    picked = states[rows, :, key_slots]  # [B, T, W, KV, D]
    return picked.permute(0, 1, 3, 2, 4).reshape(-1, kv_heads, window, dim)


def node_key_slots(
    lengths: torch.Tensor, ancestors: torch.Tensor, depths: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tree node, the slots of its keys in plain-decoding order, and which of them it sees.

    lengths [B] accepted slots per row; ancestors [T, D + 1] the node at each depth of a node's path (-1 past
    it); depths [T]; node i of row b is stored at slot lengths[b] + i. -> key_slots [B, T, W] long (entry j is a
    past slot j, the ancestor at depth j - lengths[b], or 0 where nothing is seen) and mask [B * T, 1, 1, W] bool.
    """
    batch, nodes = lengths.shape[0], ancestors.shape[0]
    slots = torch.arange(window, device=lengths.device)
    relative = (slots[None, :] - lengths[:, None])[:, None, :].expand(-1, nodes, -1)  # [B, T, W]
    path_depth = relative.clamp(0, ancestors.shape[1] - 1)
    path_node = ancestors[None].expand(batch, -1, -1).gather(2, path_depth)  # [B, T, W]
    visible = relative <= depths[None, :, None]
    in_path = (relative >= 0) & visible
    key_slots = torch.where(in_path, lengths[:, None, None] + path_node, slots)
    key_slots = torch.where(visible, key_slots, 0)
    return key_slots, visible.reshape(batch * nodes, 1, 1, window)


def use_row_attention(model: PreTrainedModel) -> None:
    """Run `model`'s attention (the whole model: the config is shared) through row_attention."""
    AttentionInterface.register(ROW_ATTENTION, row_attention)
    if model.config._attn_implementation != ROW_ATTENTION:
        model.set_attn_implementation(ROW_ATTENTION)
