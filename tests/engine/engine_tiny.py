"""Tiny random Llama, byte-level tokenizer and random heads for engine tests (built in-process)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.engine.interface import Engine, GenerationRequest, TokenEvent
from gorgon.engine.kernels.packed import can_pack, packed_copy, row_blocked_copy
from gorgon.engine.kv import RowKVCache
from gorgon.engine.shapes import ShapeSelector
from gorgon.engine.tree import TreeBuffers

EOS_ID = 256
VOCAB = 260


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (so multi-byte characters span tokens) plus <eos>."""
    vocab = {symbol: index for index, symbol in enumerate(bytes_to_unicode().values())}
    vocab["<eos>"] = EOS_ID
    for extra in range(EOS_ID + 1, VOCAB):
        vocab[f"<unused{extra}>"] = extra
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def _random_llama(seed: int, **geometry: object) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        max_position_embeddings=256,
        attn_implementation="sdpa",
        **geometry,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def tiny_llama(seed: int = 0, *, initializer_range: float = 0.3) -> LlamaForCausalLM:
    model = _random_llama(
        seed,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=initializer_range,
        eos_token_id=EOS_ID,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = EOS_ID
    return model


def looping_llama(seed: int = 0) -> LlamaForCausalLM:
    """tiny_llama's geometry with smaller weights: its greedy output falls into loops within a few tokens
    (a token repeated, or a short cycle such as 15 173 63 15 173 63), as small models' greedy text repeats
    itself; context lookup drafts predict such text."""
    return tiny_llama(seed, initializer_range=0.05)


def smollm2_shaped_llama(dtype: torch.dtype, seed: int = 3) -> LlamaForCausalLM:
    """SmolLM2's attention geometry (9 heads of 64, 3 KV heads, hidden 576), two layers, a small MLP."""
    geometry = {
        "hidden_size": 576,
        "intermediate_size": 256,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
    }
    return _random_llama(seed, initializer_range=0.1, **geometry).to(dtype)


def empty_cache(model: LlamaForCausalLM, batch: int, capacity: int) -> RowKVCache:
    """An empty RowKVCache for `model` on CPU, in the model's dtype."""
    config = model.config
    return RowKVCache.allocate(
        num_layers=config.num_hidden_layers,
        batch=batch,
        kv_heads=config.num_key_value_heads,
        head_dim=config.hidden_size // config.num_attention_heads,
        capacity=capacity,
        dtype=model.dtype,
        device=torch.device("cpu"),
    )


def as_the_cpu_engine_runs_it(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module`'s copy with the linears the CPU engine uses: packed where oneDNN packs `dtype`, else row-blocked."""
    return packed_copy(module) if can_pack(torch.device("cpu"), dtype) else row_blocked_copy(module)


def randomised(heads: MedusaHeads, seed: int = 0) -> MedusaHeads:
    """`heads` with random weights (an untrained head is the identity)."""
    torch.manual_seed(seed)
    for parameter in heads.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    return heads


def random_heads(
    num_heads: int = 3, *, own_lm_heads: bool = False, recurrent: bool = False, seed: int = 1
) -> MedusaHeads:
    torch.manual_seed(seed)
    heads = MedusaHeads(64, VOCAB, num_heads, own_lm_heads=own_lm_heads, recurrent=recurrent)
    for parameter in heads.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return heads.eval().requires_grad_(False)


class CyclingSelector(ShapeSelector):
    """Runs the engine's shapes in turn, one per step (plain, chain, tree, plain, ...): every shape and every
    transition between shapes in every batch, whatever the timing-based selector would pick on this machine.

    A decoding step asks twice: for its own shape, then (`_wants_drafts`) for the next step's, so call c
    answers shape (c + 1) // 2 of the cycle."""

    calls: int = 0

    def choose(self, batch_size: int, *, speculative_rows: int) -> TreeBuffers:
        if speculative_rows == 0:
            return self.plain
        self.calls += 1
        return self.shapes[(self.calls // 2) % len(self.shapes)]


def run_to_completion(engine: Engine, requests: Sequence[GenerationRequest]) -> dict[str, list[TokenEvent]]:
    """Add `requests` and step until the engine is empty: each request's events, in order."""
    for request in requests:
        engine.add(request)
    collected: dict[str, list[TokenEvent]] = {}
    while engine.num_active:
        for event in engine.step():
            collected.setdefault(event.request_id, []).append(event)
    return collected


def emitted_tokens(events: list[TokenEvent]) -> list[int]:
    return [token for event in events for token in event.token_ids]
