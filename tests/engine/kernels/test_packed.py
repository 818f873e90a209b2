"""Prepacked linear weights (engine/kernels/packed.py): shared weights, the HF model untouched, identical outputs."""

from __future__ import annotations

import json

import pytest
import torch
from engine_tiny import random_heads, tiny_llama
from torch import nn

from gorgon.engine.config import EngineSettings
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.engine.kernels import packed as packed_module
from gorgon.engine.kernels.packed import (
    ROW_BLOCK,
    PackedLinear,
    RowBlockedLinear,
    can_pack,
    packed_copy,
    packed_row_block,
    row_blocked_copy,
    row_blocks,
)
from gorgon.engine.loader import LoadedModel
from gorgon.engine.medusa_engine import MedusaEngine

needs_packing = pytest.mark.skipif(
    not can_pack(torch.device("cpu"), torch.bfloat16), reason="oneDNN cannot prepack bf16 weights on this CPU"
)


@needs_packing
def test_a_packed_linear_computes_what_the_linear_does_for_two_rows_or_more() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 200).to(torch.bfloat16)
    packed = PackedLinear(linear)
    for rows in (2, 3, 7, 16):
        x = torch.randn(rows, 96).to(torch.bfloat16)
        assert torch.equal(packed(x), linear(x))
    x = torch.randn(2, 5, 96).to(torch.bfloat16)
    assert torch.equal(packed(x), linear(x))


def _two_row_products(x: torch.Tensor) -> list[torch.Tensor]:
    """Each row of x followed by another row (the last by the first): one-row products round differently on some
    CPUs (a Skylake Xeon without AVX512_BF16), which the engine avoids by padding (forward.row_logits)."""
    padded = torch.cat([x, x[:1]])
    return [padded[row : row + 2] for row in range(x.shape[0])]


@needs_packing
def test_every_row_of_a_packed_linear_is_what_it_is_in_a_two_row_product() -> None:
    """Large row counts are split into blocks: on AMX CPUs oneDNN rounds products of more than 32 rows
    differently (this shape: 12 of 128 rows differ unsplit), which would make greedy output depend on batch size."""
    torch.manual_seed(0)
    packed = PackedLinear(nn.Linear(576, 1536, bias=False).to(torch.bfloat16))
    x = (torch.randn(128, 576) * 2).to(torch.bfloat16)
    pairs = torch.cat([packed(pair)[:1] for pair in _two_row_products(x)])
    assert torch.equal(packed(x), pairs)
    assert torch.equal(packed(x.reshape(4, 32, 576)), pairs.reshape(4, 32, 1536))


def test_bf16_products_are_split_into_blocks_only_where_amx_kernels_would_round_otherwise(
    monkeypatch,
) -> None:
    monkeypatch.setattr(packed_module, "amx_tiles", lambda: False)
    assert packed_row_block(torch.bfloat16) is None
    assert packed_row_block(torch.float32) == ROW_BLOCK
    monkeypatch.setattr(packed_module, "amx_tiles", lambda: True)
    assert packed_row_block(torch.bfloat16) == ROW_BLOCK


@needs_packing
def test_without_blocks_a_packed_linear_runs_one_product_of_every_row(monkeypatch) -> None:
    monkeypatch.setattr(packed_module, "amx_tiles", lambda: False)
    packed = PackedLinear(nn.Linear(576, 64, bias=False).to(torch.bfloat16))
    products: list[int] = []
    real_product = packed._product

    def counting(x: torch.Tensor) -> torch.Tensor:
        products.append(x.shape[0])
        return real_product(x)

    monkeypatch.setattr(packed, "_product", counting)
    packed(torch.randn(123, 576).to(torch.bfloat16))
    assert products == [123]


def test_no_product_is_left_a_lone_row() -> None:
    assert row_blocks(1) == [1]  # a one-row forward is padded by its caller (forward.SMALL_STEP_ROWS)
    assert row_blocks(32) == [32]
    assert row_blocks(33) == [31, 2]
    assert row_blocks(42) == [32, 10]
    assert row_blocks(97) == [32, 32, 31, 2]


@needs_packing
def test_the_last_row_of_33_is_what_it_is_among_42() -> None:
    """A prompt of 33 tokens prefilled alone puts its last token in row 33 of each product, beside a longer prompt
    among more rows. As a lone row of a product it rounded otherwise now and then (down_proj's shape, 1536 wide)."""
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(1536, 576, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(576, 1536, generator=generator) / 30)
    packed = PackedLinear(linear)
    for _ in range(40):
        x = torch.randn(42, 1536, generator=generator).to(torch.bfloat16)
        assert torch.equal(packed(x[:33]), packed(x)[:33])


def test_rows_of_an_unpacked_engine_linear_do_not_depend_on_rows_past_a_block() -> None:
    """With prepacking off the engine still splits rows into blocks of 32 (F.linear rounds >32-row bf16 products
    differently on AMX CPUs, like the packed kernel), so a row's value does not depend on how many rows past its
    block share the forward. Within a block unpacked products are not row-exact on every CPU (a Skylake Xeon
    without AVX512_BF16 rounds rows of 4 or more row products differently, in bf16 and fp32): docs/engine.md."""
    torch.manual_seed(0)
    linear = nn.Linear(576, 1536, bias=False).to(torch.bfloat16)
    blocked = row_blocked_copy(linear)
    assert isinstance(blocked, RowBlockedLinear) and blocked.weight is linear.weight
    x = (torch.randn(128, 576) * 2).to(torch.bfloat16)
    blocks = torch.cat([linear(block) for block in x.split(32)])
    assert torch.equal(blocked(x), blocks)
    assert torch.equal(blocked(x.reshape(4, 32, 576)), blocks.reshape(4, 32, 1536))


@needs_packing
def test_packed_copy_shares_weights_and_leaves_the_model_alone() -> None:
    model = tiny_llama().to(torch.bfloat16)
    decoder = model.get_decoder()
    copy = packed_copy(decoder)
    assert isinstance(copy.layers[0].mlp.down_proj, PackedLinear)
    assert type(decoder.layers[0].mlp.down_proj) is nn.Linear
    assert copy.layers[0].mlp.down_proj.weight is decoder.layers[0].mlp.down_proj.weight
    assert copy.embed_tokens.weight is decoder.embed_tokens.weight
    assert not any(type(module) is nn.Linear for module in copy.modules())


def _engine(model, tokenizer, heads, heads_dir, *, prepack: bool) -> MedusaEngine:
    loaded = LoadedModel(model, model, tokenizer, "tiny-bf16", torch.device("cpu"), torch.bfloat16, False)
    settings = EngineSettings(use_deepspeed=False, prepack_weights=prepack, heads_path=heads_dir)
    return MedusaEngine(loaded, heads, settings)


def _generate(engine: MedusaEngine, prompts: list[list[int]]) -> list[list[int]]:
    for index, prompt in enumerate(prompts):
        engine.add(GenerationRequest(f"r{index}", tuple(prompt), SamplingParams(max_new_tokens=24)))
    tokens: dict[str, list[int]] = {f"r{index}": [] for index in range(len(prompts))}
    while engine.num_active:
        for event in engine.step():
            tokens[event.request_id].extend(event.token_ids)
    return list(tokens.values())


@needs_packing
def test_a_packed_bf16_engine_generates_what_the_unpacked_one_does(tokenizer, tmp_path) -> None:
    model = tiny_llama(seed=5).to(torch.bfloat16)
    heads = random_heads(3).to(torch.bfloat16)
    prompts = [[5, 17, 99, 3, 42], [7, 8, 9, 10, 11, 12, 13], [200, 1, 2]]
    (tmp_path / "draft_vocab.json").write_text(json.dumps(list(range(0, 260, 2))))
    packed = _engine(model, tokenizer, heads, tmp_path, prepack=True)
    assert isinstance(packed.parts.lm_head, PackedLinear)
    assert isinstance(packed.parts.draft_vocabulary.projection, PackedLinear)
    assert type(model.lm_head) is nn.Linear
    unpacked = _engine(model, tokenizer, heads, tmp_path, prepack=False)
    assert isinstance(unpacked.parts.lm_head, RowBlockedLinear)
    assert _generate(packed, prompts) == _generate(unpacked, prompts)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packing_is_offered_exactly_where_onednn_can_reorder_the_weights(dtype) -> None:
    """On an AVX2-only CPU oneDNN refuses to reorder bf16 weights: the probe must say so before load does."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).to(dtype)
    x = torch.randn(2, 64).to(dtype)
    if can_pack(torch.device("cpu"), dtype):
        assert torch.allclose(PackedLinear(linear)(x).float(), linear(x).float(), atol=3e-2)
    else:
        with pytest.raises(RuntimeError):
            PackedLinear(linear)
    assert not can_pack(torch.device("cpu"), torch.float16)
    assert not can_pack(torch.device("cuda"), dtype)


@pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.float32), reason="oneDNN cannot pack fp32 here")
def test_every_row_of_a_packed_fp32_linear_is_what_it_is_in_a_two_row_product() -> None:
    torch.manual_seed(0)
    packed = PackedLinear(nn.Linear(576, 1536, bias=False))
    x = torch.randn(128, 576) * 2
    pairs = torch.cat([packed(pair)[:1] for pair in _two_row_products(x)])
    assert torch.equal(packed(x), pairs)
    assert torch.equal(torch.cat([packed(x[row : row + 1]) for row in range(128)]), pairs)


def test_an_engine_on_a_cpu_that_cannot_pack_runs_unpacked(tokenizer, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(packed_module, "onednn_packs", lambda dtype: False)
    model = tiny_llama(seed=5).to(torch.bfloat16)
    heads = random_heads(3).to(torch.bfloat16)
    engine = _engine(model, tokenizer, heads, tmp_path, prepack=True)
    linears = [
        module for module in engine.parts.decoder.modules() if isinstance(module, (nn.Linear, PackedLinear))
    ]
    assert isinstance(engine.parts.lm_head, RowBlockedLinear) and not linears
    prompts = [[5, 17, 99, 3, 42], [200, 1, 2]]
    assert _generate(engine, prompts) == _generate(
        _engine(model, tokenizer, heads, tmp_path, prepack=False), prompts
    )


def test_a_speculating_engine_without_packed_weights_warns_that_greedy_may_differ(
    tokenizer, tmp_path, caplog
) -> None:
    """Unpacked products round rows by row count on some CPUs (docs/engine.md): the user is told, once, at load."""
    model = tiny_llama(seed=5).to(torch.bfloat16)
    heads = random_heads(3).to(torch.bfloat16)
    with caplog.at_level("WARNING", logger="gorgon.engine.parts"):
        _engine(model, tokenizer, heads, tmp_path, prepack=False)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "GORGON_ENGINE_PREPACK_WEIGHTS=false" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="gorgon.engine.parts"):
        _engine(model, tokenizer, None, tmp_path, prepack=False)
    assert not [record for record in caplog.records if record.levelname == "WARNING"]
