"""Verification memory: the attention of a 64-node tree step takes memory growing with window + nodes under
MASKED_CALL (the CUDA path), with window x nodes under VIRTUAL_ROWS (keys and values gathered per node).

Measured on CPU, where both paths run: `LiveStorage`, a TorchDispatchMode, adds the bytes of every storage an aten
operator returns that none of its inputs holds (a view shares its input's storage), subtracts them when
`weakref.finalize` sees that untyped storage freed, and records the peak. The weights and the preallocated cache
exist before the step and are not counted; scratch that a fused kernel allocates inside itself (the tiles of SDPA's
CPU kernel) is not seen.

The step: mc_sim_7b_63 (64 nodes) through a two-layer model with SmolLM2's attention (9 heads, 3 KV heads of 64) in
bfloat16, one row, at windows of 128 and 256 slots. One copy of the window's keys and values per node grows by
nodes x 128 x 768 bytes (a token's keys and values in one layer) between them: VIRTUAL_ROWS must grow at least
that much. MASKED_CALL may grow by what depends on the window alone (its keys and values repeated for the query
heads, as transformers' SDPA does for grouped heads under a mask, a few copies) and by what a masked call holds per
node and slot of the window anyway: the mask, as booleans and as a float bias, and, where SDPA runs its math
backend, float32 scores and softmax weights, heads x nodes x window each. That score matrix is inherent to a masked
call on the math backend, whatever the keys' layout; with the mask it is 77 bytes per node and slot here, against
768 for a K/V copy.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from engine_tiny import empty_cache, smollm2_shaped_llama
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaForCausalLM

from gorgon.engine.attention import VerificationAttention
from gorgon.engine.forward import forward_tokens
from gorgon.engine.parts import ModelParts
from gorgon.engine.tree import MC_SIM_7B_63, build_tree_buffers

WINDOWS = (128, 256)
WINDOW_ONLY_COPIES = 4  # copies of the window's keys and values at the query heads' count
FLOAT32_BYTES = 4
MASK_BYTES_PER_ENTRY = 1 + FLOAT32_BYTES  # the boolean mask and a float bias made of it


def _storages(tensors: Iterable[Any]) -> dict[int, torch.UntypedStorage]:
    """The storages the tensors among `tensors` hold, by data pointer (empty storages left out)."""
    held = (leaf.untyped_storage() for leaf in tensors if isinstance(leaf, torch.Tensor))
    return {storage.data_ptr(): storage for storage in held if storage.nbytes()}


class LiveStorage(TorchDispatchMode):
    """Bytes of the storages allocated by aten operators inside the mode and still alive; `peak` their maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        inputs = _storages(tree_leaves((args, kwargs)))
        for pointer, storage in _storages(tree_leaves(output)).items():
            if pointer in inputs or pointer in self._tracked:
                continue
            self._tracked.add(pointer)
            self.live += storage.nbytes()
            weakref.finalize(storage, self._freed, pointer, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return output

    def _freed(self, pointer: int, size: int) -> None:
        self.live -= size
        self._tracked.discard(pointer)


def _step_peak(model: LlamaForCausalLM, verification: VerificationAttention, window: int) -> int:
    """Peak bytes allocated by one mc_sim_7b_63 step of a row whose accepted text and tree fill `window` slots."""
    parts = ModelParts(model.get_decoder(), model.get_output_embeddings(), None)
    tree = build_tree_buffers(MC_SIM_7B_63)
    cache = empty_cache(model, 1, max(WINDOWS))
    cache.lengths[:] = window - tree.num_nodes
    tokens = torch.randint(0, 200, (1, tree.num_nodes), generator=torch.Generator().manual_seed(0))
    with LiveStorage() as allocations:
        forward_tokens(
            parts,
            cache,
            tokens,
            tree.depths,
            tree.attention_mask,
            ancestors=tree.ancestors,
            exact_queries=tree.num_nodes,
            verification=verification,
        )
    return allocations.peak


def test_tree_verification_memory_grows_with_window_plus_nodes_under_the_masked_call() -> None:
    model = smollm2_shaped_llama(torch.bfloat16)
    config = model.config
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    element = model.dtype.itemsize
    nodes, more_slots = len(MC_SIM_7B_63) + 1, WINDOWS[1] - WINDOWS[0]
    kv_copy_per_node = nodes * more_slots * 2 * kv_heads * head_dim * element
    window_only = WINDOW_ONLY_COPIES * more_slots * 2 * heads * head_dim * element
    per_node_and_slot = 2 * heads * FLOAT32_BYTES + MASK_BYTES_PER_ENTRY
    masked_bound = window_only + nodes * more_slots * per_node_and_slot
    assert masked_bound < kv_copy_per_node / 3  # the shapes tell the two growths apart

    def growth(verification: VerificationAttention) -> int:
        small, large = (_step_peak(model, verification, window) for window in WINDOWS)
        return large - small

    assert growth(VerificationAttention.VIRTUAL_ROWS) >= kv_copy_per_node
    assert growth(VerificationAttention.MASKED_CALL) <= masked_bound
