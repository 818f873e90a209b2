"""A preallocated KV cache with a length per row, so ragged rows decode in one forward.

Every layer holds `[B, kv_heads, capacity, head_dim]` buffers, views into one tensor
`[2 * layers, B, kv_heads, capacity, head_dim]` so that compaction, row selection and concatenation are one
operation each instead of one per layer and buffer. That tensor is the first B rows of a pool that may hold more:
rows joining the batch are prefilled straight into the pool's spare rows (`spare_rows`, then `concatenate`), and rows
leaving it are closed up in place (`keep_rows`, moving only the rows after the first that left), so a join or a
leave does not copy the whole batch's cache. A forward writes each row's new K/V at that row's
own slots (`write_slots`, set by the caller before the forward) and attends over the first `window` slots; the
4D attention mask built by the caller hides slots a query must not see. After a Medusa step the accepted path is
moved down to the row's next free slots (`compact`), so the cache always equals a prefill of the accepted text.

This subclasses transformers' CacheLayerMixin (internal API): the transformers minor version is pinned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from gorgon.engine.interface import KVCacheUsage


@dataclass(slots=True)
class SlotPlan:
    """Where the current forward writes (shared by every layer of one cache)."""

    write_slots: torch.Tensor | None = None  # [B, Q] long
    rows: torch.Tensor | None = None  # [B, 1] long: arange(B), the row index of each write
    window: int = 0  # slots returned to attention (>= every row's length + Q)


class RowKVLayer(CacheLayerMixin):
    is_compileable = False
    is_croppable = False
    keys: torch.Tensor  # allocated up front, never None
    values: torch.Tensor

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, plan: SlotPlan) -> None:
        super().__init__()
        self.bind(keys, values)
        self.plan = plan
        self.is_initialized = True
        self.device = keys.device

    def bind(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Read and write these buffers [B, kv_heads, capacity, head_dim] (the cache's rows changed)."""
        self.keys = keys
        self.values = values
        # Slot-major views [B, capacity, kv_heads, head_dim]: a forward's keys are written by indexing these.
        self._keys_by_slot = keys.permute(0, 2, 1, 3)
        self._values_by_slot = values.permute(0, 2, 1, 3)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("RowKVLayer buffers are allocated up front")

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: [B, kv_heads, Q, head_dim]
        return self.write(key_states.transpose(1, 2), value_states.transpose(1, 2))

    def write(
        self, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write token-major key_states / value_states [B, Q, kv_heads, head_dim] at the plan's slots; returns
        the attention window's keys and values [B, kv_heads, window, head_dim].

        Written by indexing the slot-major views: on CPU, indexed assignment costs a fraction of a `scatter_`
        with an expanded index, which over every layer and buffer would take a noticeable share of a step."""
        slots, rows = self.plan.write_slots, self.plan.rows
        if slots is None or rows is None:
            raise RuntimeError("no forward planned: call RowKVCache.plan_forward first")
        self._keys_by_slot[rows, slots] = key_states.to(self.keys.dtype)
        self._values_by_slot[rows, slots] = value_states.to(self.values.dtype)
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

    def __init__(self, storage: torch.Tensor, lengths: torch.Tensor, *, first_row: int = 0) -> None:
        """storage: the pool [2 * num_layers, R, kv_heads, capacity, head_dim] (layer l's keys at 2l, values at
        2l + 1) whose rows first_row .. first_row + B - 1 this cache's B rows are (B = len(lengths))."""
        plan = SlotPlan()
        self.pool = storage
        self.first_row = first_row
        self.lengths = lengths  # [B] long, on the cache's device
        self.storage = self._rows_view()
        self.row_layers = tuple(
            RowKVLayer(self.storage[index], self.storage[index + 1], plan)
            for index in range(0, storage.shape[0], 2)
        )
        super().__init__(layers=[*self.row_layers])
        self.plan = plan

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
        spare_rows: int = 0,
    ) -> RowKVCache:
        """An empty cache of `batch` rows in a pool with `spare_rows` more, for rows that will join it."""
        rows = batch + spare_rows
        storage = torch.zeros(2 * num_layers, rows, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        return cls(storage, torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def capacity(self) -> int:
        return int(self.storage.shape[3])

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def pool_rows(self) -> int:
        """Rows the pool holds, this cache's and the spare ones after them."""
        return int(self.pool.shape[1])

    @property
    def spare_row_count(self) -> int:
        """Rows of the pool after this cache's, free for joining rows."""
        return self.pool_rows - self.first_row - self.batch_size

    def usage(self) -> KVCacheUsage:
        """Bytes allocated and the fraction of slots holding accepted tokens."""
        slots = self.pool_rows * self.capacity
        used = float(self.lengths.sum()) / slots if slots else 0.0
        return KVCacheUsage(int(self.pool.nbytes), used)

    def plan_forward(self, offsets: torch.Tensor, window: int) -> None:
        """Next forward writes query q of row b at slot lengths[b] + offsets[b, q]; attention sees `window`."""
        self.plan.write_slots = self.lengths[:, None] + offsets
        self.plan.rows = torch.arange(self.batch_size, device=self.lengths.device)[:, None]
        self.plan.window = min(window, self.capacity)

    def compact(self, source_offsets: torch.Tensor, accepted: torch.Tensor) -> None:
        """Move slots lengths + source_offsets[b, :accepted[b]] down to lengths + arange, grow row b by accepted[b].

        source_offsets: [B, L] long, offsets past lengths[b] of the kept tree nodes, root first (entries from
        accepted[b] on are ignored); accepted: [B] long, kept slots per row (<= L). Nothing moves when every
        kept node already sits at its depth (plain steps, chains, first-child paths).
        """
        width = source_offsets.shape[1]
        depth_offsets = torch.arange(width, device=source_offsets.device).expand_as(source_offsets)
        source_offsets = torch.where(depth_offsets < accepted[:, None], source_offsets, depth_offsets)
        if not torch.equal(source_offsets, depth_offsets):
            layers, batch, heads, _, dim = self.storage.shape
            shape = (layers, batch, heads, width, dim)
            source = (self.lengths[:, None] + source_offsets)[None, :, None, :, None].expand(shape)
            target = (self.lengths[:, None] + depth_offsets)[None, :, None, :, None].expand(shape)
            self.storage.scatter_(3, target, self.storage.gather(3, source))
        self.lengths = self.lengths + accepted
        self.plan.write_slots = None

    def advance(self, count: int) -> None:
        """Every row keeps the `count` slots just written (plain decoding: nothing to move)."""
        self.lengths = self.lengths + count
        self.plan.write_slots = None

    def select_rows(self, rows: torch.Tensor) -> RowKVCache:
        """A cache of its own holding copies of `rows` (in that order)."""
        return RowKVCache(self.storage.index_select(1, rows), self.lengths.index_select(0, rows))

    def copy_rows(self, source: RowKVCache, rows: torch.Tensor) -> None:
        """Row b becomes a copy of source's row rows[b] (its slots and length), in place: the layers' views stay
        valid. `source` has this cache's capacity (a select_rows of it)."""
        self.storage.copy_(source.storage.index_select(1, rows))
        self.lengths = source.lengths.index_select(0, rows)
        self.plan.write_slots = None

    def spare_rows(self, count: int, capacity: int) -> RowKVCache | None:
        """An empty cache over the pool's next `count` spare rows, to prefill joining rows into; None where the
        pool has fewer spare rows or less than `capacity` slots a row."""
        if count > self.spare_row_count or capacity > self.capacity:
            return None
        lengths = torch.zeros(count, dtype=torch.long, device=self.lengths.device)
        return RowKVCache(self.pool, lengths, first_row=self.first_row + self.batch_size)

    @torch.inference_mode()  # the pool was written under inference mode; a cancel closes it up from outside
    def keep_rows(self, rows: list[int]) -> None:
        """Keep only `rows` (ascending), in place: the rows after the first that leaves move up, none other."""
        first_moved = next((position for position, row in enumerate(rows) if row != position), len(rows))
        if first_moved < len(rows):
            start = self.first_row
            moved = torch.tensor(rows[first_moved:], device=self.lengths.device) + start
            self.pool[:, start + first_moved : start + len(rows)] = self.pool.index_select(1, moved)
        self.lengths = self.lengths[rows]
        self._rebind()

    @classmethod
    def concatenate(cls, caches: list[RowKVCache], spare_rows: int = 0) -> RowKVCache:
        """Rows of all caches in order: in the first cache's pool where each next cache is made of that pool's next
        rows, else copied into a new pool (capacity = the largest, buffers zero-padded) with `spare_rows` more."""
        first = caches[0]
        if _chained(caches):  # the joining rows were prefilled in place: they only need counting in
            first.lengths = torch.cat([cache.lengths for cache in caches])
            first._rebind()
            return first
        capacity = max(cache.capacity for cache in caches)
        parts = [_pad_slots(cache.storage, capacity) for cache in caches]
        if spare_rows:
            parts.append(parts[-1].new_zeros((*parts[-1].shape[:1], spare_rows, *parts[-1].shape[2:])))
        return cls(torch.cat(parts, dim=1), torch.cat([cache.lengths for cache in caches]))

    def _rows_view(self) -> torch.Tensor:
        return self.pool[:, self.first_row : self.first_row + self.batch_size]

    def _rebind(self) -> None:
        """The layers' buffers after this cache's rows changed."""
        self.storage = self._rows_view()
        for index, layer in enumerate(self.row_layers):
            layer.bind(self.storage[2 * index], self.storage[2 * index + 1])
        self.plan.write_slots = None


def _chained(caches: list[RowKVCache]) -> bool:
    """Whether every cache is made of the rows of the first one's pool right after the previous cache's."""
    next_row = caches[0].first_row
    for cache in caches:
        if cache.pool is not caches[0].pool or cache.first_row != next_row:
            return False
        next_row += cache.batch_size
    return True


def _pad_slots(storage: torch.Tensor, capacity: int) -> torch.Tensor:
    missing = capacity - storage.shape[3]
    if missing == 0:
        return storage
    return torch.nn.functional.pad(storage, (0, 0, 0, missing))
