"""A Llama decoder forward with fewer operations per step, computing bit for bit what transformers computes.

A decode step runs about 3,000 tensor operations over 30 layers, most on a few rows of 576 values, and on a slow
CPU each costs microseconds of dispatch whatever its size (transformers' LlamaRMSNorm alone is six operations).
This forward walks the same modules with the same arithmetic, minus what a decode step does not need: no mask
preprocessing (the engine passes the final 4D mask), no output bookkeeping, the engine's attention called
directly, and each layer's RMSNorm as one `rms_norm` call in float32 followed by the weight, which rounds exactly
as transformers' six operations do (checked in float32 and bfloat16, tests/engine/kernels/test_lean.py). Queries
and keys are rotated together, as one tensor read token-major off the fused q + k + v product
(engine/kernels/fused.py), and the keys and values written to the cache in that layout: the same element-wise
arithmetic as transformers' `apply_rotary_pos_emb` on each, half the operations, and no transposes before the
cache write. The final norm stays the model's own module, so forward hooks on it (head distillation reads the
hidden states there) keep working.

Only decoders built from transformers' own Llama layers are run this way (`supports_lean_forward`); any other
architecture keeps its HF forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaModel,
    LlamaRMSNorm,
)

from gorgon.engine.attention import row_attention
from gorgon.engine.kernels.fused import fused_attention_product
from gorgon.engine.kv import RowKVCache, RowKVLayer


class AttentionOptions(NamedTuple):
    """What a decode step asks of engine/attention.row_attention besides the mask."""

    key_slots: torch.Tensor | None
    exact_queries: int
    row_masks: tuple[torch.Tensor, ...] | None


def supports_lean_forward(decoder: nn.Module) -> bool:
    """Whether `decoder` is a transformers LlamaModel whose every layer is a stock LlamaDecoderLayer."""
    if type(decoder) is not LlamaModel:
        return False
    return all(
        type(layer) is LlamaDecoderLayer
        and type(layer.self_attn) is LlamaAttention
        and type(layer.input_layernorm) is LlamaRMSNorm
        and type(layer.post_attention_layernorm) is LlamaRMSNorm
        for layer in decoder.layers
    )


def rms_norm(norm: LlamaRMSNorm, hidden: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm's output in two operations instead of six (same rounding: float32 statistics, then the
    weight in the input's dtype)."""
    normed = nn.functional.rms_norm(
        hidden.to(torch.float32), (hidden.shape[-1],), None, norm.variance_epsilon
    )
    return norm.weight * normed.to(hidden.dtype)


def rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of token-major states [B, T, heads, D] with cos / sin [B, T, 1, D]: transformers'
    `apply_rotary_pos_emb` arithmetic (x * cos + rotate_half(x) * sin), over any number of heads at once."""
    half = states.shape[-1] // 2
    rotated = torch.cat((-states[..., half:], states[..., :half]), dim=-1)
    return states * cos + rotated * sin


def projections(
    attention: LlamaAttention, product: nn.Module | None, normed: torch.Tensor, query_key_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """normed [B, T, H] -> queries and keys [B, T, heads + kv_heads, D] (`query_key_heads` of them) and values
    [B, T, kv_heads, D], token-major; views of one output where `product` is the attention's fused q + k + v
    product."""
    heads_shape = (*normed.shape[:2], -1, attention.head_dim)
    if product is not None:
        qkv = product(normed).view(heads_shape)
        return qkv[:, :, :query_key_heads], qkv[:, :, query_key_heads:]
    query = attention.q_proj(normed).view(heads_shape)
    key = attention.k_proj(normed).view(heads_shape)
    return torch.cat((query, key), dim=2), attention.v_proj(normed).view(heads_shape)


class LeanLlamaDecoder(nn.Module):
    """Runs a LlamaModel's forward for the engine (input ids, 4D mask, positions, a RowKVCache)."""

    def __init__(self, decoder: LlamaModel) -> None:
        super().__init__()
        self.decoder = decoder
        self.config = decoder.config
        # A ModuleList slice builds a new ModuleList (a fraction of a millisecond): take the layers once.
        self._layers = _llama_layers(decoder)
        self._qkv_products = tuple(fused_attention_product(layer.self_attn) for layer in self._layers)
        self._heads = decoder.config.num_attention_heads
        self._query_key_heads = self._heads + (decoder.config.num_key_value_heads or self._heads)

    @property
    def norm(self) -> nn.Module:
        return self.decoder.norm

    def set_attn_implementation(self, name: str) -> None:
        self.decoder.set_attn_implementation(name)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: RowKVCache,
        use_cache: bool = True,
        key_slots: torch.Tensor | None = None,
        exact_queries: int = 0,
        row_masks: tuple[torch.Tensor, ...] | None = None,
    ) -> BaseModelOutputWithPast:
        """input_ids [B, T], attention_mask [B or B * T, 1, T or 1, W] bool, position_ids [B, T] -> hidden [B, T, H]
        (last_hidden_state); `key_slots`, `exact_queries` and `row_masks` go to engine/attention.row_attention. `use_cache` is
        transformers' argument: the cache is always written."""
        decoder = self.decoder
        hidden = decoder.embed_tokens(input_ids)
        cos, sin = decoder.rotary_emb(hidden, position_ids=position_ids)
        rotary = (cos[:, :, None], sin[:, :, None])  # broadcast over heads, token-major
        attention_options = AttentionOptions(key_slots, exact_queries, row_masks)
        for index, layer in enumerate(self._layers):
            attended = self._attention(
                layer.self_attn,
                self._qkv_products[index],
                rms_norm(layer.input_layernorm, hidden),
                rotary,
                attention_mask,
                past_key_values.row_layers[index],
                attention_options,
            )
            hidden = hidden + attended
            hidden = hidden + layer.mlp(rms_norm(layer.post_attention_layernorm, hidden))
        return BaseModelOutputWithPast(
            last_hidden_state=decoder.norm(hidden), past_key_values=past_key_values
        )

    def _attention(
        self,
        attention: LlamaAttention,
        qkv_product: nn.Module | None,
        normed: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache_layer: RowKVLayer,
        options: AttentionOptions,
    ) -> torch.Tensor:
        """LlamaAttention.forward with the engine's attention: projections, rotary, cache write, attention, o_proj."""
        batch, tokens = normed.shape[:2]
        queries_keys, value = projections(attention, qkv_product, normed, self._query_key_heads)
        queries_keys = rotate(queries_keys, *rotary)
        heads = self._heads
        key, value = cache_layer.write(queries_keys[:, :, heads:], value)
        query = queries_keys[:, :, :heads].transpose(1, 2)
        output, _ = row_attention(
            attention,
            query,
            key,
            value,
            mask,
            dropout=0.0,
            scaling=attention.scaling,
            key_slots=options.key_slots,
            exact_queries=options.exact_queries,
            row_masks=options.row_masks,
        )
        return attention.o_proj(output.reshape(batch, tokens, -1).contiguous())


def _llama_layers(decoder: LlamaModel) -> tuple[LlamaDecoderLayer, ...]:
    """The decoder's layers (see supports_lean_forward)."""
    layers = []
    for layer in decoder.layers[: decoder.config.num_hidden_layers]:
        if not isinstance(layer, LlamaDecoderLayer):
            raise TypeError("the lean forward runs transformers' own Llama decoder layers only")
        layers.append(layer)
    return tuple(layers)
