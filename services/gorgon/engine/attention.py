"""The decode step's attention, chosen by device: on CPU tree attention that rounds exactly like plain decoding,
elsewhere one masked call per layer whose memory grows with window + nodes.

A tree forward writes its nodes at consecutive slots past a row's accepted tokens, so a node's root path is not
contiguous in the cache: node (1,) of a tree sits at slot L + 2 although it is the token at position L + 1. Masking
the slots in between gives the same mathematical attention, but not the same rounding: kernels sum keys in slot
order, in pairs and SIMD lanes by slot index, so a key one slot further moves the rounding of the sum, and greedy
output drifts at near-ties. Here each tree node becomes a virtual row whose keys are gathered in the order plain
decoding stores them (the row's accepted slots, then the node's ancestors, then the node), so every accepted node
computes what the plain step computes at its position.

A query's output can also depend on what shares its call (other queries, other rows). So every query a decode step
may emit (`exact_queries`) is computed as a virtual row of one query by the float32 kernels of
engine/kernels/cpu_attention.py. A plain step passes `exact_queries` = its query count, a chain its nodes, a
lookahead tree its chain (its leaves, never emitted, share one faster product), a branching tree its nodes as
virtual rows over gathered keys.

That is `VerificationAttention.VIRTUAL_ROWS`, the CPU's choice (`verification_attention`): there its kernels cost
less than SDPA at decode sizes. Its gathered keys and values are one copy of the window per node: for the 64 nodes
of `mc_sim_7b_63` on Vicuna-7B about 1 MiB per row, slot of the window and layer. Other devices (CUDA) take
`MASKED_CALL`: one SDPA call per layer over [cache + tree] with the tree mask in slot order
(engine/forward.attention_mask), the same attention without copies of the window, its rounding left to the kernel.

`ModelParts` switches the model to this attention function (`use_row_attention`); without `key_slots` or
`exact_queries` it is transformers' SDPA attention unchanged, so HF `generate` on the same model computes as before,
and a `MASKED_CALL` step passes neither.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from gorgon.engine.kernels.cpu_attention import exact_queries_attention, grouped_attention

ROW_ATTENTION = "gorgon_row_attention"


class VerificationAttention(Enum):
    """How a decode step's queries attend over [cache + tree] (see the module docstring)."""

    # emitted queries one per virtual row in float32, a branching tree's keys gathered per node
    VIRTUAL_ROWS = "virtual_rows"
    # one SDPA call per layer over the window, the tree mask in slot order
    MASKED_CALL = "masked_call"


def verification_attention(device: torch.device) -> VerificationAttention:
    """VIRTUAL_ROWS on CPU, where its float32 kernels are exact and cheaper than SDPA; MASKED_CALL elsewhere, where
    copies of the window per node would take memory growing with window x nodes."""
    if device.type == "cpu":
        return VerificationAttention.VIRTUAL_ROWS
    return VerificationAttention.MASKED_CALL


def row_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    key_slots: torch.Tensor | None = None,
    exact_queries: int = 0,
    row_masks: tuple[torch.Tensor, ...] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """With key_slots [B, T, W], query t of row b attends to the slots key_slots[b, t] in order; else with
    `exact_queries` the first of them as virtual rows of one query (VIRTUAL_ROWS, see the module docstring); else
    transformers' SDPA attention in one call (MASKED_CALL). `kwargs` are what transformers passes its attention
    functions.

    query: [B, H, T, D], key / value: [B, KV, W, D]; with key_slots the mask is per virtual row, [B * T, 1, 1, W].
    Returns the attention output [B, T, H, D].
    """
    if key_slots is not None:
        batch, heads, nodes, dim = query.shape
        node_queries = query.transpose(1, 2).reshape(batch * nodes, heads, 1, dim)
        output, _ = _exact_queries_as_rows(
            node_queries,
            gather_per_node(key, key_slots),
            gather_per_node(value, key_slots),
            attention_mask,
            1,
            scaling,
        )
        return output.reshape(batch, nodes, heads, dim), None
    if exact_queries:
        return _exact_queries_as_rows(query, key, value, attention_mask, exact_queries, scaling)
    if row_masks is not None:
        return _rows_alone(module, query, key, value, row_masks, scaling, **kwargs), None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


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
    [B, T, H, D]. In float32 over keys converted once (engine/kernels/cpu_attention.py)."""
    nodes = query.shape[2]
    alone = min(exact_queries, nodes)
    key, value = key.float(), value.float()
    output = exact_queries_attention(query[:, :, :alone], key, value, _query_rows(mask, 0, alone), scale)
    if alone == nodes:
        return output, None
    leaves = grouped_attention(query[:, :, alone:], key, value, _query_rows(mask, alone, nodes), scale)
    return torch.cat((output, leaves), dim=1), None


def _rows_alone(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    row_masks: tuple[torch.Tensor, ...],
    scaling: float | None,
    **kwargs: Any,
) -> torch.Tensor:
    """Each row's first queries in an SDPA call of its own, over its own window: the call that row's forward
    alone would make. row_masks[b]: [1, 1, Q_b, W_b] bool, row b's Q_b real queries over its first W_b slots.
    -> [B, T, H, D], zeros past each row's queries (padding the caller ignores).

    SDPA on a CPU rounds a query by how many share its call (engine/kernels/cpu_attention.py): a prompt padded
    to a longer one's length, in one call with it, would leave other keys and values in the cache than the same
    prompt prefilled alone. Alone, every row's call has its own shape, so prompts of any lengths prefill in one
    forward (its linear layers compute each row the same in any batch) and each row's cache holds what it would
    hold alone."""
    batch, heads, _, dim = query.shape
    output = query.new_zeros(batch, query.shape[2], heads, dim)
    for row, mask in enumerate(row_masks):
        queries, window = mask.shape[2], mask.shape[3]
        attended, _ = sdpa_attention_forward(
            module,
            query[row : row + 1, :, :queries],
            key[row : row + 1, :, :window],
            value[row : row + 1, :, :window],
            mask,
            dropout=0.0,
            scaling=scaling,
            **kwargs,
        )
        output[row, :queries] = attended[0]
    return output


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


@runtime_checkable
class SwitchesAttention(Protocol):
    """A decoder whose attention function is chosen by name: a transformers model or the lean forward."""

    @property
    def config(self) -> PretrainedConfig: ...

    def set_attn_implementation(self, attn_implementation: str) -> None: ...


def use_row_attention(model: nn.Module) -> None:
    """Run `model`'s attention (the whole model: the config is shared) through row_attention."""
    if not isinstance(model, SwitchesAttention):
        raise TypeError(f"{type(model).__name__} does not let its attention function be chosen")
    AttentionInterface.register(ROW_ATTENTION, row_attention)
    if model.config._attn_implementation != ROW_ATTENTION:
        model.set_attn_implementation(ROW_ATTENTION)
