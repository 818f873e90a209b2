"""The running batch: per-request state plus the tensors one step needs, as a value (TGI-style).

`from_requests` allocates a cache for new rows (the engine prefills them), or `joining` takes the running batch's
spare cache rows for them; `filter` keeps some rows and `concatenate` joins batches between steps — that is how
requests join and leave a running batch. The cache's rows stay where they are (engine/kv.py): a filtered batch
shares its cache with the batch it came from, which is not used again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from gorgon.engine.detok import IncrementalDetokenizer, StopSequenceFilter
from gorgon.engine.drafting.lookup import ContextLookup
from gorgon.engine.interface import GenerationRequest
from gorgon.engine.kv import RowKVCache
from gorgon.engine.sampling import RowSampling

CAPACITY_ROUNDING = 64


def cache_capacity(tokens: int, spare_slots: int) -> int:
    """KV slots for sequences of up to `tokens` tokens plus a tree written past them, rounded up to a multiple of
    CAPACITY_ROUNDING. Attention sees the first min(window, capacity) slots, the window a multiple of 32: a
    capacity off that grid changes the key count near a sequence's end, and with it the bf16 rounding on some
    CPUs (with AMX a capacity off the grid flipped a near-tie, docs/engine.md)."""
    needed = tokens + spare_slots
    return -(-needed // CAPACITY_ROUNDING) * CAPACITY_ROUNDING


@dataclass(slots=True)
class ActiveRequest:
    """Everything about one admitted request that is not a tensor."""

    request: GenerationRequest
    sampling: RowSampling
    detokenizer: IncrementalDetokenizer
    stop_filter: StopSequenceFilter
    generated: list[int] = field(default_factory=list)
    lookup: ContextLookup | None = None  # prompt + generated, for lookup drafts (engine/drafting/lookup.py)
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    # the tokens that end the row: EOS unless ignore_eos, and its stop_token_ids
    ending_tokens: frozenset[int] = frozenset()

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def remaining_tokens(self) -> int:
        return self.request.params.max_new_tokens - len(self.generated)


def rows_capacity(rows: Sequence[ActiveRequest], spare_slots: int) -> int:
    """KV slots a row for the longest of `rows`: prompt + max_new_tokens + a tree (cache_capacity)."""
    longest = max(row.prompt_tokens + row.request.params.max_new_tokens for row in rows)
    return cache_capacity(longest, spare_slots)


def groups_by_length(rows: Sequence[ActiveRequest]) -> list[list[ActiveRequest]]:
    """`rows` grouped by prompt length, each group and the groups in arrival order."""
    by_length: dict[int, list[ActiveRequest]] = {}
    for row in rows:
        by_length.setdefault(row.prompt_tokens, []).append(row)
    return list(by_length.values())


@dataclass(slots=True)
class PartialPrefill:
    """Long prompts of one length being written into their batch's cache a chunk per step; the batch joins the
    running one after the last chunk."""

    batch: Batch
    written: int = 0  # prompt tokens of each row already in the cache

    @property
    def rows(self) -> list[ActiveRequest]:
        return self.batch.rows

    @property
    def prompt_tokens(self) -> int:
        return self.batch.rows[0].prompt_tokens


@dataclass(slots=True)
class CacheLayout:
    """What a KV cache for this model looks like (from the model config)."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    spare_slots: int  # room for the largest tree written past a row's accepted tokens


@dataclass(slots=True)
class Batch:
    rows: list[ActiveRequest]
    cache: RowKVCache
    next_tokens: torch.Tensor  # [B] long: chosen last step, not yet in the cache
    draft_topk: torch.Tensor | None  # [B, K, topk] long: the heads' drafts for the next step
    first_draft_by_model: torch.Tensor | None = None  # [B] bool: draft_topk[b, 0] from the model

    @classmethod
    def from_requests(
        cls, rows: Sequence[ActiveRequest], layout: CacheLayout, coming: Sequence[ActiveRequest] = ()
    ) -> Batch:
        """A batch of new rows with an empty cache sized for their prompts + max_new_tokens + a tree, and spare
        rows for the `coming` ones (sized for them too), which join it later without a copy."""
        capacity = rows_capacity([*rows, *coming], layout.spare_slots)
        cache = RowKVCache.allocate(
            num_layers=layout.num_layers,
            batch=len(rows),
            kv_heads=layout.kv_heads,
            head_dim=layout.head_dim,
            capacity=capacity,
            dtype=layout.dtype,
            device=layout.device,
            spare_rows=len(coming),
        )
        return cls.of_cache(rows, cache)

    @classmethod
    def of_cache(cls, rows: Sequence[ActiveRequest], cache: RowKVCache) -> Batch:
        """New rows over `cache` (empty, to be prefilled)."""
        next_tokens = torch.zeros(len(rows), dtype=torch.long, device=cache.lengths.device)
        return cls(list(rows), cache, next_tokens, None)

    def joining(self, rows: Sequence[ActiveRequest], spare_slots: int) -> Batch | None:
        """A batch of new rows over this batch's spare cache rows, which `concatenate` then joins to it without a
        copy; None where it has too few spare rows or too few slots a row."""
        cache = self.cache.spare_rows(len(rows), rows_capacity(rows, spare_slots))
        return Batch.of_cache(rows, cache) if cache is not None else None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def request_ids(self) -> list[str]:
        return [row.request_id for row in self.rows]

    def filter(self, request_ids: Iterable[str]) -> Batch | None:
        """The rows whose ids are in `request_ids`, in batch order; None when no row is left."""
        wanted = set(request_ids)
        keep = [index for index, row in enumerate(self.rows) if row.request_id in wanted]
        if not keep:
            return None
        if len(keep) == len(self.rows):
            return self
        index = torch.tensor(keep, dtype=torch.long, device=self.next_tokens.device)
        drafts = self.draft_topk.index_select(0, index) if self.draft_topk is not None else None
        by_model = self.first_draft_by_model
        self.cache.keep_rows(keep)
        return Batch(
            [self.rows[position] for position in keep],
            self.cache,
            self.next_tokens.index_select(0, index),
            drafts,
            by_model.index_select(0, index) if by_model is not None else None,
        )

    @classmethod
    def concatenate(cls, batches: Sequence[Batch], spare_rows: int = 0) -> Batch:
        """All rows of `batches` in order (a copy of their caches keeps `spare_rows` spare rows). Drafts survive
        only when every batch has them."""
        if len(batches) == 1:
            return batches[0]
        drafts = [batch.draft_topk for batch in batches if batch.draft_topk is not None]
        have_drafts = len(drafts) == len(batches)
        return cls(
            [row for batch in batches for row in batch.rows],
            RowKVCache.concatenate([batch.cache for batch in batches], spare_rows),
            torch.cat([batch.next_tokens for batch in batches]),
            torch.cat(drafts) if have_drafts else None,
            torch.cat([batch.drafts_by_model() for batch in batches]) if have_drafts else None,
        )

    def drafts_by_model(self) -> torch.Tensor:
        """[B] bool: first_draft_by_model, all False where it is unset."""
        if self.first_draft_by_model is not None:
            return self.first_draft_by_model
        return torch.zeros(len(self.rows), dtype=torch.bool, device=self.next_tokens.device)
