"""Projections of the same input computed as one product (CPU engine copies).

A Llama-style layer projects its normed input three times for attention (q, k, v) and twice for the MLP (gate,
up). On CPU each product has a fixed cost besides reading its weights, which one product over the concatenated
weights pays once; the gain grows with the rows a step verifies (docs/engine.md). The fused product's outputs are
bit-identical to the separate ones (each output column is the same dot product over the same input; checked in
bf16 and fp32 at 2-32 rows, tests/engine/kernels/test_fused.py).

`fuse_projections` rewrites a structural copy of a decoder. The fused weight is one tensor, and the model's own
q/k/v (gate/up) weights become views of it, so memory does not grow and the HF model keeps computing as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj")


class SharedProduct(nn.Module):
    """One linear product whose output several `ProductSlice`s read; computed once per input tensor and held
    only until its last slice has read it (a held prefill product would pin [B, S, q + k + v] per layer)."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None

    def output_for(self, x: torch.Tensor, *, last: bool) -> torch.Tensor:
        output = self._output if x is self._input and self._output is not None else self.linear(x)
        self._input, self._output = (None, None) if last else (x, output)
        return output


class ProductSlice(nn.Module):
    """Output features [start, stop) of a shared product: stands in for one of the fused projections. The
    `last` slice (v_proj: Llama's attention projects q, k, v in that order) releases the product."""

    def __init__(self, shared: SharedProduct, start: int, stop: int, *, last: bool) -> None:
        super().__init__()
        self.shared = shared
        self.start, self.stop = start, stop
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.output_for(x, last=self.last)[..., self.start : self.stop]


def fused_attention_product(attention: nn.Module) -> nn.Module | None:
    """The one q + k + v product of an attention module that fuse_projections rewrote (its output holds q, k, v
    in that order), else None."""
    slices = [
        part
        for name in ATTENTION_PROJECTIONS
        if isinstance(part := getattr(attention, name, None), ProductSlice)
    ]
    if len(slices) != len(ATTENTION_PROJECTIONS) or len({id(part.shared) for part in slices}) != 1:
        return None
    return slices[0].shared.linear


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with gate and up as one product (Llama's MLP)."""

    def __init__(
        self, gate_up: nn.Module, down_proj: nn.Module, act_fn: nn.Module, intermediate: int
    ) -> None:
        super().__init__()
        self.gate_up = gate_up
        self.down_proj = down_proj
        self.act_fn = act_fn
        self.intermediate = intermediate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        product = self.gate_up(x)
        gate, up = product[..., : self.intermediate], product[..., self.intermediate :]
        return self.down_proj(self.act_fn(gate) * up)


def fuse_projections(module: nn.Module) -> None:
    """In place: every attention module's q/k/v and every gated MLP's gate/up become one product each."""
    for parent in list(module.modules()):
        linears = _linears(parent, ATTENTION_PROJECTIONS)
        if linears is not None:
            shared = SharedProduct(_fused_linear(linears))
            start = 0
            for name, linear in zip(ATTENTION_PROJECTIONS, linears, strict=True):
                last = name == ATTENTION_PROJECTIONS[-1]
                setattr(parent, name, ProductSlice(shared, start, start + linear.out_features, last=last))
                start += linear.out_features
    for parent in list(module.modules()):
        for attribute, child in list(parent.named_children()):
            linears = _linears(child, MLP_PROJECTIONS)
            down_proj, act_fn = getattr(child, "down_proj", None), getattr(child, "act_fn", None)
            if linears is not None and isinstance(down_proj, nn.Module) and isinstance(act_fn, nn.Module):
                gated = GatedMLP(_fused_linear(linears), down_proj, act_fn, linears[0].out_features)
                setattr(parent, attribute, gated)


def _linears(module: nn.Module, names: Sequence[str]) -> list[nn.Linear] | None:
    """The named nn.Linear children of `module` if all exist, share their input and agree on bias; else None."""
    linears = [linear for name in names if type(linear := getattr(module, name, None)) is nn.Linear]
    if len(linears) != len(names):
        return None
    if (
        len({linear.in_features for linear in linears}) != 1
        or len({linear.bias is None for linear in linears}) != 1
    ):
        return None
    return linears


def _fused_linear(linears: Sequence[nn.Linear]) -> nn.Linear:
    """One nn.Linear over the concatenated output features; each original weight (and bias) becomes a view of
    the fused tensor, so both share storage."""
    first = linears[0]
    fused = nn.Linear(
        first.in_features,
        sum(linear.out_features for linear in linears),
        bias=first.bias is not None,
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    fused.requires_grad_(False)
    _share_as_views(fused.weight, [linear.weight for linear in linears])
    if fused.bias is not None:
        _share_as_views(fused.bias, [linear.bias for linear in linears])
    return fused


def _share_as_views(fused: torch.Tensor, parts: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        torch.cat([part.detach() for part in parts], out=fused.data)
    start = 0
    for part in parts:
        stop = start + part.shape[0]
        part.data = fused.data[start:stop]
        start = stop
