"""The Medusa engine: continuous batching over the per-row KV cache, one forward per `step()`.

The scheduler (engine/scheduler.py) decides what a step does: prefill newly admitted requests (their first token
comes out) or advance every running row by one speculative step (engine/decode.py) in the shape it picked. The
engine runs that step and turns its tokens into events: detokenised text, stop sequences, finish reasons.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.engine.batch import ActiveRequest, Batch, CacheLayout, prefill_groups
from gorgon.engine.chat import encode_chat
from gorgon.engine.config import EngineSettings
from gorgon.engine.decode import StepOutcome, prefill, speculative_step
from gorgon.engine.detok import IncrementalDetokenizer, StopSequenceFilter
from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.engine.drafting.lookup import ContextLookup, with_lookup_drafts
from gorgon.engine.interface import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    KVCacheUsage,
    ModelInfo,
    TokenEvent,
)
from gorgon.engine.loader import LoadedModel
from gorgon.engine.parts import build_parts
from gorgon.engine.sampling import RowSampling, TypicalAcceptance
from gorgon.engine.scheduler import Decode, Prefill, Scheduler
from gorgon.engine.shapes import ShapeSelector, build_shapes

log = logging.getLogger(__name__)


class MedusaEngine:
    """Implements gorgon.engine.interface.Engine on a HF causal LM with optional Medusa heads."""

    runs_inline = False  # a step runs the model: the worker calls it on its engine thread

    def __init__(self, loaded: LoadedModel, heads: MedusaHeads | None, settings: EngineSettings) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.settings = settings
        config = loaded.model.config
        self.parts = build_parts(loaded, heads, settings)
        self.scheduler = Scheduler(
            ShapeSelector(build_shapes(settings, heads, loaded.device)),
            max_batch_size=settings.max_batch_size,
            drafts=heads is not None,
        )
        self.rule = TypicalAcceptance(settings.typical_epsilon, settings.typical_alpha)
        self.layout = CacheLayout(
            num_layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            dtype=loaded.dtype,
            device=loaded.device,
            spare_slots=max(shape.num_nodes for shape in self.scheduler.selector.shapes) + 1,
        )
        self.eos_token_ids = _eos_token_ids(loaded)
        self.info = ModelInfo(
            name=loaded.name,
            context_length=settings.context_length or int(getattr(config, "max_position_embeddings", 2048)),
            max_batch_size=settings.max_batch_size,
            speculative=heads is not None,
        )
        self.batch: Batch | None = None
        self.forward_passes = 0
        log.info(
            "engine ready: %s, speculation %s, shapes %s",
            self.info.name,
            "on" if heads is not None else "off (no Medusa heads)",
            [shape.name for shape in self.scheduler.selector.shapes],
        )

    # --- the Engine protocol -------------------------------------------------------------------------------

    def encode(self, prompt: str | Sequence[ChatMessage]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))
        return encode_chat(self.tokenizer, self.info.name, prompt)

    def admits(self, request: GenerationRequest, token_budget: int | None) -> bool:
        return self.scheduler.admits(request, self.batch, token_budget)

    def add(self, request: GenerationRequest) -> None:
        self._validate(request)
        params = request.params
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(device=self.layout.device)
            generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        sampling = RowSampling(
            temperature=params.temperature,
            top_p=params.top_p,
            speculative=params.use_speculative and self.info.speculative,
            generator=generator,
        )
        self.scheduler.enqueue(
            ActiveRequest(
                request,
                sampling,
                IncrementalDetokenizer(self.tokenizer),
                StopSequenceFilter(params.stop),
                lookup=self._context_lookup(request) if sampling.speculative else None,
            )
        )

    def cancel(self, request_id: str) -> None:
        self.scheduler.cancel(request_id)
        if self.batch is not None:
            self.batch = self.batch.filter(rid for rid in self.batch.request_ids if rid != request_id)

    def step(self) -> list[TokenEvent]:
        next_step = self.scheduler.next_step(self.batch)
        if isinstance(next_step, Prefill):
            return self._prefill(next_step.rows)
        if isinstance(next_step, Decode):
            return self._decode(next_step)
        return []

    @property
    def num_active(self) -> int:
        return len(self.scheduler.waiting) + len(self.batch or ())

    def kv_cache_usage(self) -> KVCacheUsage | None:
        batch = self.batch
        return batch.cache.usage() if batch is not None else None

    # --- steps ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _prefill(self, rows: list[ActiveRequest]) -> list[TokenEvent]:
        """The joining rows' prompts written into new batches' caches, which join the running batch."""
        prefilled = [
            (group, self._prefill_group(group)) for group in prefill_groups(rows, self.loaded.device)
        ]
        running = [self.batch] if self.batch is not None else []
        self.batch = Batch.concatenate(running + [batch for _, (batch, _) in prefilled])
        return [
            event for group, (_, outcome) in prefilled for event in self._emit(outcome, drafted=0, rows=group)
        ]

    def _prefill_group(self, rows: list[ActiveRequest]) -> tuple[Batch, StepOutcome]:
        """One forward writing `rows`' prompts into a new batch's cache."""
        new_batch = Batch.from_requests(rows, self.layout)
        outcome = prefill(
            self.parts,
            new_batch.cache,
            [row.request.prompt_ids for row in rows],
            [row.sampling for row in rows],
        )
        self.forward_passes += 1
        new_batch.next_tokens, new_batch.draft_topk = outcome.next_tokens, outcome.draft_topk
        return new_batch, outcome

    @torch.inference_mode()
    def _decode(self, step: Decode) -> list[TokenEvent]:
        batch, shape = step.batch, step.shape
        started = time.perf_counter()
        if shape.num_nodes > 1 and batch.draft_topk is not None:
            batch.draft_topk = with_lookup_drafts(
                batch.draft_topk, [row.lookup for row in batch.rows], batch.first_draft_by_model
            )
        outcome = speculative_step(
            self.parts,
            batch.cache,
            batch.next_tokens,
            batch.draft_topk,
            shape,
            [row.sampling for row in batch.rows],
            self.rule,
            want_drafts=step.want_drafts,
        )
        self.forward_passes += 1
        self.scheduler.record(
            step, time.perf_counter() - started - outcome.plain_draft_seconds, outcome.emitted
        )
        batch.next_tokens, batch.draft_topk = outcome.next_tokens, outcome.draft_topk
        batch.first_draft_by_model = outcome.first_draft_by_model
        return self._emit(outcome, drafted=shape.max_depth, rows=list(batch.rows))

    def _context_lookup(self, request: GenerationRequest) -> ContextLookup | None:
        """The row's lookup index; None with lookup drafts off (then no step looks anything up)."""
        settings = self.settings
        if not settings.lookup_drafts:
            return None
        return ContextLookup(
            request.prompt_ids, min_ngram=settings.lookup_min_ngram, max_ngram=settings.lookup_max_ngram
        )

    # --- output --------------------------------------------------------------------------------------------

    def _emit(self, outcome: StepOutcome, *, drafted: int, rows: list[ActiveRequest]) -> list[TokenEvent]:
        """One event per row (rows[i] produced outcome.emitted[i]); finished rows leave the batch."""
        events = []
        for row, tokens, accepted in zip(rows, outcome.emitted, outcome.accepted_drafts, strict=True):
            row_drafted = drafted if row.sampling.speculative else 0
            events.append(self._advance_row(row, tokens, row_drafted, accepted))
        finished = {event.request_id for event in events if event.finish_reason is not None}
        if finished and self.batch is not None:
            self.batch = self.batch.filter(rid for rid in self.batch.request_ids if rid not in finished)
        return events

    def _advance_row(self, row: ActiveRequest, tokens: list[int], drafted: int, accepted: int) -> TokenEvent:
        kept: list[int] = []
        finish: FinishReason | None = None
        for token in tokens[: row.remaining_tokens]:
            kept.append(token)
            if token in self.eos_token_ids:
                finish = FinishReason.STOP
                break
        row.generated.extend(kept)
        if row.lookup is not None:
            row.lookup.extend(kept)
        if finish is None and row.remaining_tokens <= 0:
            finish = FinishReason.LENGTH
        text, hit_stop = row.stop_filter.push(row.detokenizer.add(kept))
        if hit_stop:
            finish = FinishReason.STOP
        elif finish is not None:
            text += row.stop_filter.flush()
        row.drafted_tokens += drafted
        row.accepted_tokens += accepted
        return TokenEvent(
            request_id=row.request_id,
            token_ids=tuple(kept),
            text=text,
            finish_reason=finish,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=len(row.generated),
            drafted_tokens=drafted,
            accepted_tokens=min(accepted, len(kept)),
        )

    def _validate(self, request: GenerationRequest) -> None:
        params = request.params
        if not request.prompt_ids:
            raise GorgonError("the prompt is empty", param="prompt")
        if params.max_new_tokens < 1:
            raise GorgonError("max_tokens must be at least 1", param="max_tokens")
        if params.temperature < 0 or not 0 < params.top_p <= 1:
            raise GorgonError("temperature must be >= 0 and top_p in (0, 1]", param="temperature")
        total = len(request.prompt_ids) + params.max_new_tokens
        if total > self.info.context_length:
            raise ContextOverflowError(
                f"this model's maximum context length is {self.info.context_length} tokens, but the prompt has "
                f"{len(request.prompt_ids)} tokens and max_tokens asks for {params.max_new_tokens} more "
                f"({total}); shorten the prompt or lower max_tokens",
                param="max_tokens",
            )
        vocab = self.parts.vocab_size
        if max(request.prompt_ids) >= vocab or min(request.prompt_ids) < 0:
            raise GorgonError(f"prompt token ids must lie in [0, {vocab})", param="prompt")


def _eos_token_ids(loaded: LoadedModel) -> frozenset[int]:
    ids: set[int] = set()
    configured = loaded.model.generation_config.eos_token_id if loaded.model.generation_config else None
    for value in (configured, loaded.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(item) for item in value)
    return frozenset(ids)
