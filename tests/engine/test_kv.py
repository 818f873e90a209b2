"""The per-row KV cache: what it allocates and how much of it holds tokens."""

from __future__ import annotations

import torch

from gorgon.engine.kv import RowKVCache


def test_usage_is_the_bytes_allocated_and_the_share_of_slots_holding_tokens() -> None:
    layers, rows, kv_heads, capacity, head_dim = 2, 3, 4, 16, 8
    cache = RowKVCache.allocate(
        num_layers=layers,
        batch=rows,
        kv_heads=kv_heads,
        head_dim=head_dim,
        capacity=capacity,
        dtype=torch.float16,
        device=torch.device("cpu"),
    )
    cache.lengths[:] = torch.tensor([4, 8, 12])
    usage = cache.usage()
    assert (
        usage.allocated_bytes == layers * 2 * rows * kv_heads * capacity * head_dim * 2
    )  # keys + values, fp16
    assert usage.used_fraction == (4 + 8 + 12) / (rows * capacity)


def _cache(rows: int, spare_rows: int = 0, capacity: int = 16) -> RowKVCache:
    return RowKVCache.allocate(
        num_layers=2,
        batch=rows,
        kv_heads=1,
        head_dim=2,
        capacity=capacity,
        dtype=torch.float32,
        device=torch.device("cpu"),
        spare_rows=spare_rows,
    )


def _mark_rows(cache: RowKVCache, first_mark: int) -> None:
    """Fill row b of every layer with first_mark + b, and give it that length."""
    marks = torch.arange(first_mark, first_mark + cache.batch_size, dtype=torch.float32)
    cache.storage.copy_(marks[None, :, None, None, None].expand_as(cache.storage))
    cache.lengths = marks.long()


def _row_marks(cache: RowKVCache) -> list[int]:
    return cache.storage[:, :, 0, 0, 0].amax(0).long().tolist()


def test_joining_rows_are_prefilled_into_spare_rows_and_joined_without_a_copy() -> None:
    running = _cache(2, spare_rows=3)
    _mark_rows(running, 10)
    joining = running.spare_rows(2, capacity=16)
    assert joining is not None and joining.pool is running.pool
    _mark_rows(joining, 20)
    joined = RowKVCache.concatenate([running, joining])
    assert joined is running and joined.pool.data_ptr() == running.pool.data_ptr()
    assert _row_marks(joined) == [10, 11, 20, 21] and joined.lengths.tolist() == [10, 11, 20, 21]
    assert joined.spare_row_count == 1
    assert joined.spare_rows(2, capacity=16) is None  # one spare row left
    assert joined.spare_rows(1, capacity=32) is None  # rows too short


def test_rows_leaving_close_up_in_place() -> None:
    cache = _cache(5)
    _mark_rows(cache, 10)
    pool = cache.pool.data_ptr()
    cache.keep_rows([0, 2, 4])
    assert cache.pool.data_ptr() == pool
    assert _row_marks(cache) == [10, 12, 14] and cache.lengths.tolist() == [10, 12, 14]
    assert all(layer.keys[:, 0, 0, 0].tolist() == [10, 12, 14] for layer in cache.row_layers)
    assert cache.spare_row_count == 2  # the rows that left, free for the next joining rows


def test_caches_of_different_pools_are_copied_into_one_with_spare_rows() -> None:
    first, second = _cache(2), _cache(1, capacity=32)
    _mark_rows(first, 10)
    _mark_rows(second, 20)
    joined = RowKVCache.concatenate([first, second], spare_rows=2)
    assert joined.capacity == 32 and joined.pool_rows == 5 and joined.spare_row_count == 2
    assert _row_marks(joined) == [10, 11, 20]
