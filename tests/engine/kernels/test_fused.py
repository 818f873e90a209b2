"""Fused projections (engine/kernels/fused.py): one product for q/k/v and gate/up, identical outputs, shared weights."""

from __future__ import annotations

import pytest
import torch
from engine_tiny import tiny_llama
from torch import nn

from gorgon.engine.kernels.fused import GatedMLP, ProductSlice, SharedProduct, fuse_projections
from gorgon.engine.kernels.packed import can_pack, packed_copy, row_blocked_copy


def _hidden(model: nn.Module, decoder: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return decoder(input_ids=input_ids).last_hidden_state


def test_fused_decoder_computes_what_the_unfused_one_does_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama()
    decoder = model.get_decoder()
    input_ids = torch.randint(0, model.config.vocab_size, (3, 11))
    before = _hidden(model, decoder, input_ids)
    with monkeypatch.context() as patch:
        patch.setattr("gorgon.engine.kernels.packed.fuse_projections", lambda module: None)
        unfused = row_blocked_copy(decoder)
    fused = row_blocked_copy(decoder)
    assert isinstance(fused.layers[0].mlp, GatedMLP)
    assert isinstance(fused.layers[0].self_attn.k_proj, ProductSlice)
    assert torch.equal(_hidden(model, fused, input_ids), _hidden(model, unfused, input_ids))
    assert all(module._output is None for module in fused.modules() if isinstance(module, SharedProduct))
    assert torch.equal(_hidden(model, decoder, input_ids), before)  # the model itself computes as before


@pytest.mark.skipif(
    not can_pack(torch.device("cpu"), torch.bfloat16), reason="oneDNN cannot prepack bf16 weights on this CPU"
)
def test_fused_packed_decoder_computes_what_the_unfused_one_does_in_bfloat16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_llama().to(torch.bfloat16)
    decoder = model.get_decoder()
    input_ids = torch.randint(0, model.config.vocab_size, (4, 9))
    with monkeypatch.context() as patch:
        patch.setattr("gorgon.engine.kernels.packed.fuse_projections", lambda module: None)
        unfused = packed_copy(decoder)
    fused = packed_copy(decoder)
    assert torch.equal(_hidden(model, fused, input_ids), _hidden(model, unfused, input_ids))


def test_the_model_weights_become_views_of_the_fused_weight() -> None:
    model = tiny_llama()
    attention = model.get_decoder().layers[0].self_attn
    q_before, v_before = attention.q_proj.weight.detach().clone(), attention.v_proj.weight.detach().clone()
    copy = row_blocked_copy(model.get_decoder())
    fused_weight = copy.layers[0].self_attn.q_proj.shared.linear.weight
    assert attention.q_proj.weight.data_ptr() == fused_weight.data_ptr()
    assert attention.v_proj.weight.untyped_storage().data_ptr() == fused_weight.untyped_storage().data_ptr()
    assert torch.equal(attention.q_proj.weight, q_before) and torch.equal(attention.v_proj.weight, v_before)


def test_a_shared_product_is_computed_once_per_input_and_released_by_its_last_slice() -> None:
    calls = []

    class Counting(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x)
            return super().forward(x)

    shared = SharedProduct(Counting(4, 6))
    first, second = ProductSlice(shared, 0, 2, last=False), ProductSlice(shared, 2, 6, last=True)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    assert first(x).shape == (3, 2) and second(x).shape == (3, 4)
    assert len(calls) == 1
    assert shared._input is None and shared._output is None  # nothing held between forwards
    assert torch.equal(torch.cat([first(y), second(y)], dim=-1), shared.linear(y))
    assert len(calls) == 3  # a new input is a new product (the last call is the direct one)


def test_modules_without_matching_projections_are_left_alone() -> None:
    block = nn.Sequential(nn.Linear(4, 4), nn.SiLU())
    fuse_projections(block)
    assert type(block[0]) is nn.Linear
