"""The lean Llama forward computes bit for bit what transformers' forward computes, for every kind of forward a
decode step makes (engine/kernels/lean.py)."""

from __future__ import annotations

import pytest
import torch
from engine_tiny import empty_cache, random_heads, smollm2_shaped_llama, tiny_llama
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from gorgon.engine.config import EngineSettings
from gorgon.engine.forward import forward_tokens
from gorgon.engine.kernels.fused import fused_attention_product
from gorgon.engine.kernels.lean import LeanLlamaDecoder, rms_norm, supports_lean_forward
from gorgon.engine.kernels.packed import row_blocked_copy
from gorgon.engine.kv import RowKVCache
from gorgon.engine.loader import LoadedModel
from gorgon.engine.parts import ModelParts, build_parts
from gorgon.engine.tree import build_tree_buffers, chain

BRANCHING_TREE = ((0,), (1,), (2,), (0, 0), (1, 0))
PROMPTS = ([5, 17, 99, 3, 250, 8, 41], [12, 7, 7, 200])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_rounds_as_llama_rms_norm(dtype) -> None:
    torch.manual_seed(0)
    norm = LlamaRMSNorm(576, eps=1e-5).to(dtype)
    torch.nn.init.normal_(norm.weight)
    for rows in (1, 2, 7, 33):
        hidden = (torch.randn(1, rows, 576) * 3).to(dtype)
        assert torch.equal(rms_norm(norm, hidden), norm(hidden))


def _step_forwards(parts: ModelParts, cache: RowKVCache) -> list[torch.Tensor]:
    """A ragged prefill, then a plain batched step, a chain, a branching tree: each forward's hidden states."""
    batch = len(PROMPTS)
    longest = max(len(prompt) for prompt in PROMPTS)
    input_ids = torch.tensor([prompt + [0] * (longest - len(prompt)) for prompt in PROMPTS])
    causal = torch.ones(longest, longest, dtype=torch.bool).tril()
    depths = torch.arange(longest)
    hidden = [forward_tokens(parts, cache, input_ids, depths, causal)]
    cache.compact(depths.expand(batch, -1), torch.tensor([len(prompt) for prompt in PROMPTS]))
    root = torch.zeros(1, dtype=torch.long)
    hidden.append(forward_tokens(parts, cache, torch.tensor([[9], [31]]), root, root, exact_queries=1))
    cache.advance(1)
    for tree in (build_tree_buffers(chain(3)), build_tree_buffers(BRANCHING_TREE)):
        tokens = torch.arange(tree.num_nodes).expand(batch, -1) + 40
        ancestors = None if tree.is_chain else tree.ancestors
        hidden.append(
            forward_tokens(
                parts,
                cache,
                tokens,
                tree.depths,
                tree.attention_mask,
                ancestors=ancestors,
                exact_queries=tree.num_nodes,
            )
        )
        cache.advance(1)
    return hidden


@pytest.mark.parametrize("fused", [False, True], ids=["own-modules", "fused-copy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_decode_forward_is_bit_identical_to_transformers(dtype, fused) -> None:
    """Over the model's own modules (separate q, k, v products) and over the engine's CPU copy with q + k + v
    as one product, whose output the lean forward reads queries, keys and values from."""
    model = smollm2_shaped_llama(dtype)
    stock = ModelParts(model.get_decoder(), model.get_output_embeddings(), None)
    decoder = row_blocked_copy(model.get_decoder()) if fused else model.get_decoder()
    assert (fused_attention_product(decoder.layers[0].self_attn) is not None) is fused
    lean = ModelParts(LeanLlamaDecoder(decoder), model.get_output_embeddings(), None)
    stock_cache, lean_cache = empty_cache(model, len(PROMPTS), 64), empty_cache(model, len(PROMPTS), 64)
    for expected, got in zip(
        _step_forwards(stock, stock_cache), _step_forwards(lean, lean_cache), strict=True
    ):
        assert torch.equal(got, expected)
    assert torch.equal(lean_cache.storage, stock_cache.storage)


def test_hooks_on_the_final_norm_see_the_lean_forward() -> None:
    """Head distillation reads hidden states from a forward hook on the decoder's final norm."""
    model = tiny_llama()
    lean = LeanLlamaDecoder(model.get_decoder())
    seen: list[torch.Tensor] = []
    handle = lean.norm.register_forward_hook(lambda _module, _inputs, output: seen.append(output))
    try:
        hidden = _step_forwards(
            ModelParts(lean, model.get_output_embeddings(), None), empty_cache(model, 2, 64)
        )
    finally:
        handle.remove()
    assert len(seen) == len(hidden)
    assert all(torch.equal(a, b) for a, b in zip(seen, hidden, strict=True))


def _loaded(model: LlamaForCausalLM) -> LoadedModel:
    return LoadedModel(model, model, None, "tiny", torch.device("cpu"), model.dtype, uses_deepspeed=False)


@pytest.mark.parametrize("lean_forward", [True, False])
def test_the_engine_runs_llama_decoders_lean_unless_turned_off(lean_forward) -> None:
    parts = build_parts(
        _loaded(tiny_llama()), random_heads(), EngineSettings(lean_forward=lean_forward, draft_vocab_size=0)
    )
    assert isinstance(parts.decoder, LeanLlamaDecoder) is lean_forward


def test_other_architectures_keep_their_own_forward() -> None:
    model = tiny_llama()
    assert supports_lean_forward(model.get_decoder())
    model.get_decoder().layers[0].input_layernorm = torch.nn.LayerNorm(64)
    assert not supports_lean_forward(model.get_decoder())
    parts = build_parts(_loaded(model), None, EngineSettings())
    assert not isinstance(parts.decoder, LeanLlamaDecoder)
