"""Linear layers with weights reordered once into oneDNN's blocked layout (CPU).

`F.linear` on a bf16 CPU tensor reorders the weight into oneDNN's blocked layout on every call; for the small
row counts of decoding that reorder costs as much as the product. Reordering once at load removes it. The product
itself is the same oneDNN kernel: outputs are bit-identical to `F.linear` for two rows or more (checked on every
SmolLM2 linear shape, 1 to 40 rows; one row differs as it does unpacked, see forward.SMALL_STEP_ROWS),
and, split into blocks of at most ROW_BLOCK rows and never a lone row (`row_blocks`), independent of how many
rows a forward holds.

The engine packs a structural copy of the decoder that shares every weight with the loaded model, so the HF model
itself (HF `generate` in the benchmark, head training) keeps plain `nn.Linear` layers.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable

import torch
from torch import nn

from gorgon.engine.kernels.fused import fuse_projections

log = logging.getLogger(__name__)

ROW_BLOCK = 32
"""Rows per product. With AMX (Sapphire Rapids and later) oneDNN computes products of more than 32 rows with other
kernels, whose rounding differs from the 2-row product in some rows (up to 32 rows none does). Splitting larger
inputs into blocks of 32 keeps every row's value independent of how many rows share the forward (batch, tree size,
prefill length), which greedy exactness needs."""


def row_blocks(rows: int) -> list[int]:
    """Sizes of the products `rows` rows are computed in: blocks of ROW_BLOCK, the last two made 31 + 2 where a lone
    row would be left (33, 65, 97, ... rows). A product of one row takes oneDNN's matrix-vector path, which rounds
    otherwise than a row of a larger product (seen on down_proj's 1536-wide input: the 33rd row of 33 differed
    from the same row among 42)."""
    full, tail = divmod(rows, ROW_BLOCK)
    if tail == 1 and full:
        return [ROW_BLOCK] * (full - 1) + [ROW_BLOCK - 1, 2]
    return [ROW_BLOCK] * full + ([tail] if tail else [])


class RowBlockedLinear(nn.Module):
    """y = x W^T + b computed in blocks of ROW_BLOCK rows with F.linear: the unpacked engine's linear on CPU, so
    that its rows too are independent of how many share a forward (GORGON_ENGINE_PREPACK_WEIGHTS=false)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_row_blocks(self._product, x, self.out_features, ROW_BLOCK)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class PackedLinear(nn.Module):
    """y = x W^T + b with W pre-reordered for oneDNN; `weight` stays the original tensor (shared, not copied)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.register_buffer(
            "packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach()), persistent=False
        )
        self.row_block = packed_row_block(linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_row_blocks(self._product, x, self.out_features, self.row_block)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def packed_row_block(dtype: torch.dtype) -> int | None:
    """Rows per packed product: None (one product, however many rows) for bf16 on a CPU without AMX, ROW_BLOCK
    otherwise. Without AMX, every row of a packed bf16 product of 2 to 259 rows is its 2-row product's (SmolLM2's
    linear shapes on an AVX512_BF16 CPU), and one product costs less than blocks (a 123-row prefill's linears:
    124-127 ms in one product each, 144 ms in 32-row blocks); AMX kernels and fp32 products keep the blocks."""
    return None if dtype == torch.bfloat16 and not amx_tiles() else ROW_BLOCK


@functools.cache
def amx_tiles() -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and later), as torch sees it; where torch cannot tell, True
    (blocks are exact on every CPU)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else True


def in_row_blocks(
    product: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, out_features: int, block: int | None
) -> torch.Tensor:
    """product(x) [..., in] -> [..., out], computed in the products `row_blocks` sizes when x has more than
    `block` rows (None: one product)."""
    if block is None or _rows(x) <= block:
        return product(x)
    rows = x.reshape(-1, x.shape[-1])
    blocks = [product(part) for part in rows.split(row_blocks(rows.shape[0]))]
    return torch.cat(blocks).reshape(*x.shape[:-1], out_features)


def _rows(x: torch.Tensor) -> int:
    """Rows of a linear's input [..., in_features], without building a view (one operation fewer per product)."""
    return x.numel() // x.shape[-1]


PACKABLE_DTYPES = (torch.bfloat16, torch.float32)


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the engine prepacks its linears: CPU, bf16 or fp32, and oneDNN able to reorder that dtype here.

    Packing pays for bf16 (above) and for fp32 too, where the unpacked products (MKL) cost several times the
    packed ones at decode row counts and round a row by how many share the product, while every packed row is
    bit-identical to its 2-row product (docs/engine.md). Some CPUs (AVX2-only) have no oneDNN bf16 path: the
    reorder raises "bf16 path needs the cpu support ...", so a small probe asks oneDNN itself."""
    return (
        device.type == "cpu"
        and dtype in PACKABLE_DTYPES
        and torch.backends.mkldnn.is_available()
        and onednn_packs(dtype)
    )


@functools.cache
def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN reorders `dtype` linear weights on this CPU."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype))
    except RuntimeError as error:
        log.info("oneDNN cannot prepack %s weights on this CPU (%s): linears run unpacked", dtype, error)
        return False
    return True


def packed_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` sharing its parameters and buffers, its projections of one input fused
    (engine/kernels/fused.py), with every nn.Linear replaced by a PackedLinear."""
    return _copy_replacing_linears(module, PackedLinear)


def row_blocked_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` sharing its parameters and buffers, its projections of one input fused, with every
    nn.Linear a RowBlockedLinear."""
    return _copy_replacing_linears(module, RowBlockedLinear)


def _copy_replacing_linears(module: nn.Module, replacement: type[nn.Module]) -> nn.Module:
    shared = {id(tensor): tensor for tensor in (*module.parameters(), *module.buffers())}
    clone = copy.deepcopy(module, memo=shared)
    if type(clone) is nn.Linear:
        return replacement(clone)
    fuse_projections(clone)
    for parent in list(clone.modules()):
        for attribute, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, attribute, replacement(child))
    return clone
