"""The base model's forward over a batch's new tokens: where they are written in the cache, at which positions,
what each one sees, and logits that round the same for one row as for many."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gorgon.engine.attention import VerificationAttention, node_key_slots, verification_attention
from gorgon.engine.kv import RowKVCache
from gorgon.engine.parts import ModelParts

WINDOW_ROUNDING = 32  # attention window rounded up so SDPA sees few distinct shapes


def rounded_window(slots: int) -> int:
    """The attention window of a forward whose rows reach `slots` slots: rounded up to WINDOW_ROUNDING."""
    return -(-slots // WINDOW_ROUNDING) * WINDOW_ROUNDING


def attention_mask(lengths: torch.Tensor, tree_mask: torch.Tensor, window: int) -> torch.Tensor:
    """[B, 1, T, window] bool: query i of row b sees the row's accepted slots and its tree ancestors."""
    num_nodes = tree_mask.shape[0]
    slots = torch.arange(window, device=lengths.device)
    if num_nodes == 1:  # plain decoding: the accepted slots and the new token's own slot
        return (slots[None, :] <= lengths[:, None])[:, None, None]
    relative = slots[None, :] - lengths[:, None]  # [B, W]
    seen_past = relative < 0
    in_tree = (relative >= 0) & (relative < num_nodes)
    tree_columns = relative.clamp(0, num_nodes - 1)[:, None, :].expand(-1, num_nodes, -1)  # [B, T, W]
    tree_part = tree_mask[None].expand(lengths.shape[0], -1, -1).gather(2, tree_columns)
    return (seen_past[:, None, :] | (in_tree[:, None, :] & tree_part))[:, None]


def forward_tokens(
    parts: ModelParts,
    cache: RowKVCache,
    input_ids: torch.Tensor,
    depths: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    ancestors: torch.Tensor | None = None,
    exact_queries: int = 0,
    verification: VerificationAttention | None = None,
    query_counts: Sequence[int] | None = None,
) -> torch.Tensor:
    """Run input_ids [B, T] written at slots lengths + arange(T), positions lengths + depths. -> hidden [B, T, H].

    How the tokens attend is `verification`, by default the one of input_ids' device (engine/attention.py). With
    VIRTUAL_ROWS and `ancestors` (a branching tree, see TreeBuffers) every node attends to its path in
    plain-decoding order, so accepted nodes round exactly as plain steps do; without, one masked window, whose first
    `exact_queries` tokens (those that may be emitted) attend as virtual rows of one query so that they round as a
    plain step's token does. With MASKED_CALL every layer attends in one call under the tree mask in slot order.
    `query_counts` (a prefill of prompts padded to the longest): each row's real tokens; with VIRTUAL_ROWS each row
    attends in a call of its own, as it would alone (engine/attention.py).
    """
    num_nodes = input_ids.shape[1]
    longest = int(cache.lengths.max()) + num_nodes
    window = rounded_window(longest)
    offsets = torch.arange(num_nodes, device=input_ids.device).expand(input_ids.shape[0], -1)
    cache.plan_forward(offsets, window)
    window = cache.plan.window
    if verification is None:
        verification = verification_attention(input_ids.device)
    mask, attention_options = _attention_inputs(
        verification,
        cache.lengths,
        tree_mask,
        depths,
        window,
        ancestors=ancestors,
        exact_queries=exact_queries,
        query_counts=query_counts,
    )
    positions = cache.lengths[:, None] + depths[None, :]
    output = parts.decoder(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        **attention_options,
    )
    return output.last_hidden_state


def _attention_inputs(
    verification: VerificationAttention,
    lengths: torch.Tensor,
    tree_mask: torch.Tensor,
    depths: torch.Tensor,
    window: int,
    *,
    ancestors: torch.Tensor | None,
    exact_queries: int,
    query_counts: Sequence[int] | None = None,
) -> tuple[torch.Tensor, dict[str, object]]:
    """The mask and row_attention's options of a forward (see forward_tokens): MASKED_CALL passes the window's
    mask alone; VIRTUAL_ROWS a branching tree's key slots and per-node mask, or the window's mask, and the count
    of exact queries, or with `query_counts` each row's own mask."""
    options: dict[str, object] = {}
    if verification is VerificationAttention.MASKED_CALL:
        return attention_mask(lengths, tree_mask, window), options
    if query_counts is not None:
        options["row_masks"] = row_alone_masks(lengths, query_counts)
    if exact_queries:
        options["exact_queries"] = exact_queries
    if ancestors is None:
        return attention_mask(lengths, tree_mask, window), options
    options["key_slots"], mask = node_key_slots(lengths, ancestors, depths, window)
    return mask, options


def row_alone_masks(lengths: torch.Tensor, query_counts: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Per row b, the causal mask [1, 1, Q_b, W_b] of its query_counts[b] tokens written past its lengths[b]
    slots, over the window a forward of that row alone attends (W_b = lengths[b] + Q_b rounded up)."""
    masks = []
    for length, count in zip(lengths.tolist(), query_counts, strict=True):
        window = rounded_window(length + count)
        slots = torch.arange(window, device=lengths.device)
        positions = torch.arange(length, length + count, device=lengths.device)
        masks.append((slots[None, :] <= positions[:, None])[None, None])
    return tuple(masks)


SMALL_STEP_ROWS = 4
"""Product rows a step of one or two single-token rows is padded to. One row is a matrix-vector product, which oneDNN
rounds otherwise than a row of a larger product (greedy decoding would drift from what the same text gives inside a
batch or a tree); and two rows took a slower kernel than three to six (SmolLM2's 120 linears, bf16, one thread on an
AVX512_BF16 CPU: 17.6 ms at 2 rows, 13.3–13.8 ms at 3 to 6, 15.6 ms at 1)."""


def row_logits(lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """hidden [N, H] -> logits [N, V]; a single row is padded (see SMALL_STEP_ROWS)."""
    if hidden.shape[0] != 1:
        return lm_head(hidden)
    return lm_head(hidden.expand(SMALL_STEP_ROWS, -1))[:1]


def forward_next_tokens(parts: ModelParts, cache: RowKVCache, next_tokens: torch.Tensor) -> torch.Tensor:
    """Each row's next token in one forward -> hidden [B, 1, H].

    One or two rows are padded to SMALL_STEP_ROWS product rows, each row with copies of its token after it: a copy
    sits past the real token (which cannot see it), its KV slot past the row's length, overwritten by the next
    step, and its attention and outputs are never read.
    """
    batch = next_tokens.shape[0]
    copies = SMALL_STEP_ROWS // batch if 2 * batch <= SMALL_STEP_ROWS else 1
    device = next_tokens.device
    if copies == 1:
        root_only = cache.lengths.new_zeros(1)  # depth 0; as a mask only its shape [1] matters
        return forward_tokens(parts, cache, next_tokens[:, None], root_only, root_only, exact_queries=1)
    tokens = next_tokens[:, None].expand(-1, copies)
    chain = torch.ones(copies, copies, dtype=torch.bool, device=device).tril()
    hidden = forward_tokens(parts, cache, tokens, torch.arange(copies, device=device), chain, exact_queries=1)
    return hidden[:, :1]
