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
mask (measured 2026-12-01 on SmolLM2: on bench prompt 0 greedy Medusa drifted from plain decoding at token 14).
On a Zen 4 EPYC (AVX512_BF16, 2026-12-02) float32 SDPA rounded nearly every query of a many-row call differently
from the same query in a 2-row call, and bf16 SDPA cost ~1.2 µs per key and call (2 queries over 288 keys:
400 µs, a sixth of a plain step over 30 layers at 300 tokens of context). So on CPU every query a decode step may
emit is computed by `exact_queries_attention`: float32, one query per (virtual) row, as batched products of one
fixed shape per row and KV head, which round a query the same whatever the batch, the shape or the thread count
(checked on random SmolLM2-shaped inputs in bf16 and float32, tests/engine/test_attention.py). A plain step
passes `exact_queries` = its query count, a chain its nodes, a lookahead tree its chain (its leaves, never
emitted, share one faster product), a branching tree its nodes as virtual rows over gathered keys. Measured
against SDPA in the engine (Zen 4, bf16, same process, the two alternating in blocks of 5 steps, median step):
plain batch 1 at 177 / 387 tokens of context 38.2 -> 36.0 / 45.9 -> 42.8 ms, batch 4 49.2 -> 36.8 ms, batch 16
116.1 -> 66.1 ms; the 4-deep chain at batch 1 69.0 -> 58.8 ms, at batch 4 231.9 -> 103.2 ms. On other devices the
exact queries keep SDPA as virtual rows of one query over per-row copies of the keys (`_sdpa_virtual_rows`; checked on CPU tensors against a float64 reference, not run on a GPU: none here).

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
        output, _ = _exact_queries_as_rows(
            node_queries,
            gather_per_node(key, key_slots),
            gather_per_node(value, key_slots),
            attention_mask,
            1,
            scale,
        )
        return output.reshape(batch, nodes, heads, dim), None
    if exact_queries:
        return _exact_queries_as_rows(query, key, value, attention_mask, exact_queries, scale)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


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


def _exact_queries_as_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    exact_queries: int,
    scale: float | None,
) -> tuple[torch.Tensor, None]:
    """Queries 0 .. exact_queries - 1 each as a virtual row of one query over its row's keys, the rest (if any,
    never emitted: lookahead leaves) together in one product whose rounding may depend on their number; outputs
    [B, T, H, D]. On CPU in float32 over keys converted once (exact_queries_attention, _grouped_attention);
    elsewhere by SDPA (_sdpa_virtual_rows, _sdpa)."""
    nodes = query.shape[2]
    alone = min(exact_queries, nodes)
    on_cpu = query.device.type == "cpu"
    if on_cpu:
        key, value = key.float(), value.float()
    exact = exact_queries_attention if on_cpu else _sdpa_virtual_rows
    output = exact(query[:, :, :alone], key, value, _query_rows(mask, 0, alone), scale)
    if alone == nodes:
        return output, None
    together = _grouped_attention if on_cpu else _sdpa
    leaves = together(query[:, :, alone:], key, value, _query_rows(mask, alone, nodes), scale)
    return torch.cat((output, leaves), dim=1), None


def _grouped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """query [B, H, Q, D], key / value [B, KV, W, D] float32, mask [B, 1, Q or 1, W] bool -> [B, Q, H, D]: the
    Q queries of each KV head's group in one float32 product (not exact: rounding may depend on Q)."""
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


def _sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """SDPA with keys shared across each group of query heads: [N, H, Q, D] -> [N, Q, H, D]."""
    output = nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scale, enable_gqa=key.shape[1] != query.shape[1]
    )
    return output.transpose(1, 2)


def _sdpa_virtual_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """exact_queries_attention by SDPA (other devices): the queries in one call as virtual rows of one query over
    per-row copies of the keys. query [B, H, Q, D], mask [B, 1, Q or 1, W] -> [B, Q, H, D]."""
    batch, heads, queries, dim = query.shape
    if mask is not None:
        mask = mask.expand(batch, 1, queries, -1).reshape(batch * queries, 1, 1, -1)
    return _sdpa(
        query.transpose(1, 2).reshape(batch * queries, heads, 1, dim),
        _per_virtual_row(key, queries),
        _per_virtual_row(value, queries),
        mask,
        scale,
    ).reshape(batch, queries, heads, dim)


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
