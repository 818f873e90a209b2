"""A preallocated KV cache with a length per row, so ragged rows decode in one forward.

Every layer holds `[B, kv_heads, capacity, head_dim]` buffers. A forward writes each row's new K/V at that row's
own slots (`write_slots`, set by the caller before the forward) and attends over the first `window` slots; the
4D attention mask built by the caller hides slots a query must not see. After a Medusa step the accepted path is
moved down to the row's next free slots (`compact`), so the cache always equals a prefill of the accepted text.

This subclasses transformers' CacheLayerMixin (internal API): the transformers minor version is pinned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass(slots=True)
class SlotPlan:
    """Where the current forward writes (shared by every layer of one cache)."""

    write_slots: torch.Tensor | None = None  # [B, Q] long
    window: int = 0  # slots returned to attention (>= every row's length + Q)


class RowKVLayer(CacheLayerMixin):
    is_compileable = False
    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, plan: SlotPlan) -> None:
        super().__init__()
        self.keys = keys  # [B, kv_heads, capacity, head_dim]
        self.values = values
        self.plan = plan
        self.is_initialized = True
        self.device = keys.device

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("RowKVLayer buffers are allocated up front")

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: [B, kv_heads, Q, head_dim]; write_slots: [B, Q]
        slots = self.plan.write_slots
        index = slots[:, None, :, None].expand(-1, key_states.shape[1], -1, key_states.shape[3])
        self.keys.scatter_(2, index, key_states.to(self.keys.dtype))
        self.values.scatter_(2, index, value_states.to(self.values.dtype))
        window = self.plan.window
        return self.keys[:, :, :window], self.values[:, :, :window]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.plan.window, 0

    def get_seq_length(self) -> int:
        return max(self.plan.window - 1, 0)

    def get_max_length(self) -> int:
        return int(self.keys.shape[2])


class RowKVCache(Cache):
    """The per-row cache of one batch. `lengths[b]` = slots of row b that hold accepted tokens."""

    def __init__(self, layers: list[RowKVLayer], plan: SlotPlan, lengths: torch.Tensor) -> None:
        super().__init__(layers=layers)
        self.plan = plan
        self.lengths = lengths  # [B] long, on the cache's device

    @classmethod
    def allocate(
        cls,
        *,
        num_layers: int,
        batch: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> RowKVCache:
        plan = SlotPlan()
        shape = (batch, kv_heads, capacity, head_dim)
        layers = [
            RowKVLayer(
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
                plan,
            )
            for _ in range(num_layers)
        ]
        return cls(layers, plan, torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def capacity(self) -> int:
        return int(self.layers[0].keys.shape[2])

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    def plan_forward(self, offsets: torch.Tensor, window: int) -> None:
        """Next forward writes query q of row b at slot lengths[b] + offsets[b, q]; attention sees `window`."""
        self.plan.write_slots = self.lengths[:, None] + offsets
        self.plan.window = min(window, self.capacity)

    def compact(self, source_offsets: torch.Tensor, accepted: torch.Tensor) -> None:
        """Move slots lengths + source_offsets[b, :] down to lengths + arange, then grow each row by accepted[b].

        source_offsets: [B, L] long (offsets past lengths[b] of the kept tree nodes, root first, padded with any
        valid offset); accepted: [B] long, kept slots per row (<= L).
        """
        width = source_offsets.shape[1]
        source = self.lengths[:, None] + source_offsets
        target = self.lengths[:, None] + torch.arange(width, device=source.device)
        if not torch.equal(
            source_offsets, torch.arange(width, device=source.device).expand_as(source_offsets)
        ):
            for layer in self.layers:
                for buffer in (layer.keys, layer.values):
                    heads, dim = buffer.shape[1], buffer.shape[3]
                    gathered = buffer.gather(2, source[:, None, :, None].expand(-1, heads, -1, dim))
                    buffer.scatter_(2, target[:, None, :, None].expand(-1, heads, -1, dim), gathered)
        self.lengths = self.lengths + accepted
        self.plan.write_slots = None

    def advance(self, count: int) -> None:
        """Every row keeps the `count` slots just written (plain decoding: nothing to move)."""
        self.lengths = self.lengths + count
        self.plan.write_slots = None

    def select_rows(self, rows: torch.Tensor) -> RowKVCache:
        """A cache holding only `rows` (in that order)."""
        plan = SlotPlan()
        layers = [
            RowKVLayer(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), plan)
            for layer in self.layers
        ]
        return RowKVCache(layers, plan, self.lengths.index_select(0, rows))

    @classmethod
    def concatenate(cls, caches: list[RowKVCache]) -> RowKVCache:
        """Rows of all caches in order; capacity = the largest (buffers zero-padded)."""
        capacity = max(cache.capacity for cache in caches)
        plan = SlotPlan()
        layers = []
        for layer_index in range(len(caches[0].layers)):
            keys = [_pad_slots(cache.layers[layer_index].keys, capacity) for cache in caches]
            values = [_pad_slots(cache.layers[layer_index].values, capacity) for cache in caches]
            layers.append(RowKVLayer(torch.cat(keys), torch.cat(values), plan))
        return cls(layers, plan, torch.cat([cache.lengths for cache in caches]))


def _pad_slots(buffer: torch.Tensor, capacity: int) -> torch.Tensor:
    missing = capacity - buffer.shape[2]
    if missing == 0:
        return buffer
    return torch.nn.functional.pad(buffer, (0, 0, 0, missing))
