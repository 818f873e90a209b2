"""The Medusa engine: continuous batching over the per-row KV cache, one forward per `step()`.

The scheduler (engine/scheduler.py) decides what a step does: prefill newly admitted requests (their first token
comes out), write the next chunk of a long prompt, or advance every running row by one speculative step
(engine/decode.py) in the shape it picked. The engine runs that step and turns its tokens into events: detokenised
text, stop sequences, finish reasons, log-probabilities.

A row ends at EOS or at one of its stop_token_ids (finish reason stop; the token counts as generated and carries
its log-probability, but adds no text). Under ignore_eos an EOS is a token like any other, and like every special
token it adds no text (vLLM decodes with skip_special_tokens). A request's parameters become its row's logits
processors (engine/logits_processing.py, engine/grammar.py), which decode.py applies wherever a token is chosen.

A row that fails on its own (a prefill forward of its prompt group, its logits processors, its sampling, its
detokenising) ends with an error event and leaves the batch; the other rows' step goes on.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence

import torch

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.engine.batch import (
    ActiveRequest,
    Batch,
    CacheLayout,
    PartialPrefill,
    cache_capacity,
    groups_by_length,
)
from gorgon.engine.chat import encode_chat
from gorgon.engine.config import (
    DEFAULT_CPU_PREFILL_CHUNK_TOKENS,
    DEFAULT_CUDA_PREFILL_CHUNK_TOKENS,
    EngineSettings,
)
from gorgon.engine.decode import StepOutcome, prefill, prefill_chunk, speculative_step
from gorgon.engine.detok import IncrementalDetokenizer, StopSequenceFilter
from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.engine.drafting.lookup import ContextLookup, with_lookup_drafts
from gorgon.engine.forward import SMALL_STEP_ROWS
from gorgon.engine.grammar import grammar_processors
from gorgon.engine.interface import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    KVCacheUsage,
    ModelInfo,
    TokenEvent,
)
from gorgon.engine.loader import LoadedModel
from gorgon.engine.logits_processing import LogitsProcessor, commit_tokens, sampling_processors
from gorgon.engine.logprobs import EmittedLogprobs, TokenTexts
from gorgon.engine.memory_budget import (
    MemorySource,
    ModelGeometry,
    StepShape,
    device_memory,
    fits_kv_budget,
    kv_budget,
    verification_window_copies,
)
from gorgon.engine.parts import build_parts
from gorgon.engine.sampling import RowSampling, TypicalAcceptance, is_greedy, row_generator
from gorgon.engine.scheduler import Decode, Prefill, PrefillChunk, Scheduler, budget_tokens
from gorgon.engine.shapes import ShapeSelector, build_shapes
from gorgon.engine.validation import check_request, check_token_ids

log = logging.getLogger(__name__)


class MedusaEngine:
    """Implements gorgon.engine.interface.Engine on a HF causal LM with optional Medusa heads."""

    runs_inline = False  # a step runs the model: the worker calls it on its engine thread

    def __init__(
        self,
        loaded: LoadedModel,
        heads: MedusaHeads | None,
        settings: EngineSettings,
        *,
        read_memory: MemorySource = device_memory,
    ) -> None:
        """`read_memory`: the device's memory at start, which sets the KV token budget (engine/memory_budget.py)."""
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        # `encode` runs on the worker's preparation thread while steps detokenise: each thread has its own copy
        self.prompt_tokenizer = copy.deepcopy(loaded.tokenizer)
        self.settings = settings
        config = loaded.model.config
        geometry = ModelGeometry.from_config(config, loaded.dtype)
        self.parts = build_parts(loaded, heads, settings)
        self.prefill_chunk_tokens = settings.prefill_chunk_tokens or (
            DEFAULT_CPU_PREFILL_CHUNK_TOKENS
            if loaded.device.type == "cpu"
            else DEFAULT_CUDA_PREFILL_CHUNK_TOKENS
        )
        self.scheduler = Scheduler(
            ShapeSelector(build_shapes(settings, heads, loaded.device)),
            max_batch_size=settings.max_batch_size,
            drafts=heads is not None,
            prefill_tokens=self.prefill_chunk_tokens,
        )
        self.rule = TypicalAcceptance(settings.typical_epsilon, settings.typical_alpha)
        self.layout = CacheLayout(
            num_layers=config.num_hidden_layers,
            kv_heads=geometry.kv_heads,
            head_dim=geometry.head_dim,
            dtype=loaded.dtype,
            device=loaded.device,
            spare_slots=max(SMALL_STEP_ROWS, *(shape.num_nodes for shape in self.scheduler.selector.shapes))
            + 1,
        )
        self.eos_token_ids = _eos_token_ids(loaded)
        self.token_texts = TokenTexts(loaded.tokenizer)  # logprobs' token texts, decoded on the step thread
        self.info = ModelInfo(
            name=loaded.name,
            context_length=settings.context_length or int(getattr(config, "max_position_embeddings", 2048)),
            max_batch_size=settings.max_batch_size,
            speculative=heads is not None,
        )
        shapes = self.scheduler.selector.shapes
        largest_step = StepShape(
            rows=settings.max_batch_size,
            tree_nodes=max(shape.num_nodes for shape in shapes),
            prefill_tokens=self.prefill_chunk_tokens,
            window_copies=verification_window_copies(shapes, loaded.device),
        )
        self.kv_budget = kv_budget(
            geometry,
            largest_step,
            loaded.device,
            settings.gpu_memory_utilization,
            minimum_tokens=cache_capacity(self.info.context_length, self.layout.spare_slots),
            read_memory=read_memory,
        )
        log.info("KV cache budget: %s", self.kv_budget.describe())
        self.batch: Batch | None = None
        self.partial: list[PartialPrefill] = []  # long prompts being prefilled a chunk per step, oldest first
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
            return list(self.prompt_tokenizer.encode(prompt))
        if len(prompt) > self.info.context_length:  # refused before the template renders them all
            raise ContextOverflowError(
                f"{len(prompt)} messages cannot fit this model's maximum context length of "
                f"{self.info.context_length} tokens (every message takes at least one)",
                param="messages",
            )
        return encode_chat(self.prompt_tokenizer, self.info.name, prompt)

    def admits(self, request: GenerationRequest, token_budget: int | None) -> bool:
        """The worker's `token_budget` and the engine's KV memory budget (engine/memory_budget.py) must both hold.
        A request beyond the context window never fits: it is admitted, so that `add` refuses it now instead of
        once the batch drains (the budget holds at least one context, checked at start)."""
        if budget_tokens(request) > self.info.context_length:
            return True
        request_capacity = cache_capacity(budget_tokens(request), self.layout.spare_slots)
        fits_memory = fits_kv_budget(
            self._held_rows(), self._held_capacity(), request_capacity, self.kv_budget.tokens
        )
        return fits_memory and self.scheduler.admits(request, self.batch, token_budget)

    def add(self, request: GenerationRequest) -> None:
        self._validate(request)
        params = request.params
        greedy = is_greedy(params.temperature)
        sampling = RowSampling(
            temperature=params.temperature,
            top_p=params.top_p,
            speculative=params.use_speculative and self.info.speculative,
            generator=None if greedy else row_generator(params.seed, self.layout.device),
            processors=tuple(self._row_processors(request)),
            logprobs=params.logprobs,
        )
        eos = frozenset() if params.ignore_eos else self.eos_token_ids
        self.scheduler.enqueue(
            ActiveRequest(
                request,
                sampling,
                IncrementalDetokenizer(self.tokenizer),
                StopSequenceFilter(params.stop),
                lookup=self._context_lookup(request) if sampling.speculative else None,
                ending_tokens=eos | frozenset(params.stop_token_ids),
            )
        )

    def cancel(self, request_id: str) -> None:
        self.scheduler.cancel(request_id)
        if self.batch is not None:
            self.batch = self.batch.filter(rid for rid in self.batch.request_ids if rid != request_id)
        for partial in list(self.partial):
            kept = partial.batch.filter(rid for rid in partial.batch.request_ids if rid != request_id)
            if kept is None:
                self.partial.remove(partial)
            else:
                partial.batch = kept

    def step(self) -> list[TokenEvent]:
        next_step = self.scheduler.next_step(self.batch)
        if isinstance(next_step, PrefillChunk):
            return self._prefill_next_chunk()
        if isinstance(next_step, Prefill):
            return self._prefill(next_step.rows)
        if isinstance(next_step, Decode):
            return self._decode(next_step)
        return []

    @property
    def num_active(self) -> int:
        return len(self.scheduler.waiting) + len(self.scheduler.chunked) + len(self.batch or ())

    def kv_cache_usage(self) -> KVCacheUsage | None:
        batch = self.batch
        return batch.cache.usage() if batch is not None else None

    def _held_rows(self) -> int:
        """Rows the held requests take in KV memory: the running batch's pool (its spare rows too), the partial
        prefills' rows, and the waiting rows its spare rows do not hold."""
        pool = self.batch.cache.pool_rows if self.batch is not None else 0
        spare = self.batch.cache.spare_row_count if self.batch is not None else 0
        waiting = max(0, len(self.scheduler.waiting) - spare)
        return pool + len(self.scheduler.chunked) + waiting

    def _held_capacity(self) -> int:
        """KV slots per row the held rows will be padded to: the running and partial batches' capacities and the
        waiting rows' own (a filtered batch keeps its capacity after its longest row left)."""
        batches = ([self.batch] if self.batch is not None else []) + [
            partial.batch for partial in self.partial
        ]
        spare = self.layout.spare_slots
        waiting = [cache_capacity(budget_tokens(row.request), spare) for row in self.scheduler.waiting]
        return max([batch.cache.capacity for batch in batches] + waiting, default=0)

    # --- steps ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _prefill(self, rows: list[ActiveRequest]) -> list[TokenEvent]:
        """The joining rows' prompts written in one forward into a new batch's cache, which joins the running
        batch; prompts longer than a chunk start a partial prefill instead. If that forward fails, each row is
        prefilled alone (it computes the same there), and only the rows that fail alone end with error events."""
        chunk = self.prefill_chunk_tokens
        for group in groups_by_length([row for row in rows if row.prompt_tokens > chunk]):
            self.partial.append(PartialPrefill(Batch.from_requests(group, self.layout)))
            self.scheduler.chunked += group
        whole = [row for row in rows if row.prompt_tokens <= chunk]
        prefilled, failed = self._prefill_groups([whole] if whole else [])
        if len(whole) > 1 and failed:
            log.warning("the prefill of %d requests failed; prefilling them one by one", len(whole))
            prefilled, failed = self._prefill_groups([[row] for row in whole])
        return failed + [
            event for group, outcome in prefilled for event in self._emit(outcome, drafted=0, rows=group)
        ]

    def _prefill_groups(
        self, groups: list[list[ActiveRequest]]
    ) -> tuple[list[tuple[list[ActiveRequest], StepOutcome]], list[TokenEvent]]:
        """Each group's prefill, each joining the running batch; the error events of the rows of groups whose
        prefill failed."""
        prefilled: list[tuple[list[ActiveRequest], StepOutcome]] = []
        failed: list[TokenEvent] = []
        for group in groups:
            try:
                prefilled.append((group, self._prefill_group(group)))
            except torch.OutOfMemoryError:
                raise  # the batch is too big, not this group at fault: the worker retries the step smaller
            except Exception as exc:
                log.exception("prefill of %d requests failed", len(group))
                failed += [_failure_event(row, f"prefill failed: {exc}") for row in group]
        return prefilled, failed

    def _prefill_group(self, rows: list[ActiveRequest]) -> StepOutcome:
        """One forward writing `rows`' prompts into a new batch's cache, which then joins the running batch."""
        new_batch = self._new_rows_batch(rows)
        outcome = prefill(
            self.parts,
            new_batch.cache,
            [row.request.prompt_ids for row in rows],
            [row.sampling for row in rows],
        )
        self.forward_passes += 1
        new_batch.next_tokens, new_batch.draft_topk = outcome.next_tokens, outcome.draft_topk
        self._join(new_batch)
        return outcome

    def _new_rows_batch(self, rows: list[ActiveRequest]) -> Batch:
        """A batch for joining rows: in the running batch's spare cache rows where they fit, else in a new cache,
        which keeps spare rows for the whole prompts still waiting when it becomes the running batch (joining a
        running batch, it is copied into a new pool that keeps them, `_join`)."""
        if self.batch is None:
            return Batch.from_requests(rows, self.layout, coming=self._coming_rows(len(rows)))
        joining = self.batch.joining(rows, self.layout.spare_slots)
        return joining if joining is not None else Batch.from_requests(rows, self.layout)

    def _coming_rows(self, joining: int) -> list[ActiveRequest]:
        """The waiting rows that will join the running batch as whole prompts once `joining` more rows have."""
        room = self.scheduler.max_batch_size - len(self.batch or ()) - len(self.scheduler.chunked) - joining
        chunk = self.prefill_chunk_tokens
        return [row for row in self.scheduler.waiting if row.prompt_tokens <= chunk][: max(0, room)]

    def _join(self, batch: Batch) -> None:
        """`batch`'s rows join the running batch (a copy of the caches keeps spare rows for the coming ones)."""
        if self.batch is None:
            self.batch = batch
            return
        self.batch = Batch.concatenate([self.batch, batch], spare_rows=len(self._coming_rows(0)))

    @torch.inference_mode()
    def _prefill_next_chunk(self) -> list[TokenEvent]:
        """The next chunk of the oldest partial prefill; after its last one the rows choose their first tokens
        and join the running batch. A failing chunk fails its rows alone."""
        partial = self.partial[0]
        end = partial.written + self.prefill_chunk_tokens
        pieces = [row.request.prompt_ids[partial.written : end] for row in partial.rows]
        try:
            if end < partial.prompt_tokens:
                prefill_chunk(self.parts, partial.batch.cache, pieces)
            else:
                outcome = prefill(
                    self.parts, partial.batch.cache, pieces, [row.sampling for row in partial.rows]
                )
        except torch.OutOfMemoryError:
            raise  # the batch is too big, not these rows at fault: the worker retries the step smaller
        except Exception as exc:
            log.exception("a prefill chunk of %d requests failed; failing them alone", len(partial.rows))
            self._end_partial(partial)
            return [_failure_event(row, f"prefill failed: {exc}") for row in partial.rows]
        self.forward_passes += 1
        partial.written = end
        if end < partial.prompt_tokens:
            return []
        self._end_partial(partial)
        batch = partial.batch
        batch.next_tokens, batch.draft_topk = outcome.next_tokens, outcome.draft_topk
        self._join(batch)
        return self._emit(outcome, drafted=0, rows=list(batch.rows))

    def _end_partial(self, partial: PartialPrefill) -> None:
        self.partial.remove(partial)
        self.scheduler.end_chunking(partial.batch.request_ids)

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

    def _row_processors(self, request: GenerationRequest) -> list[LogitsProcessor]:
        """The logits processors of a new row (engine/logits_processing.py); none for default parameters. The
        grammar of a response_format comes last: it has the last word. GorgonError for a response_format the
        grammar engine refuses."""
        params, vocab = request.params, self.parts.vocab_size
        sampling = sampling_processors(
            params,
            request.original_prompt_ids,
            eos_token_ids=self.eos_token_ids,
            vocab_size=vocab,
            device=self.layout.device,
        )
        grammar = grammar_processors(
            params, self.tokenizer, eos_token_ids=self.eos_token_ids, vocab_size=vocab
        )
        processors = sampling + grammar
        if request.resumed_tokens:  # a resumed request's earlier output is output to them
            for processor in processors:
                processor.commit(request.resumed_ids)
        return processors

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
        """One event per row (rows[i] produced outcome.emitted[i]); finished and failed rows leave the batch."""
        events = []
        for index, (row, tokens, accepted) in enumerate(
            zip(rows, outcome.emitted, outcome.accepted_drafts, strict=True)
        ):
            failure = outcome.failed_rows.get(index)
            if failure is None:
                row_drafted = drafted if row.sampling.speculative else 0
                logprobs = outcome.logprobs.get(index)
                events.append(self._advance_row_alone(row, tokens, row_drafted, accepted, logprobs))
            else:
                log.error("request %s failed: %s", row.request_id, failure)
                events.append(_failure_event(row, failure))
        leaving = {event.request_id for event in events if event.finish_reason or event.error}
        if leaving and self.batch is not None:
            self.batch = self.batch.filter(rid for rid in self.batch.request_ids if rid not in leaving)
        return events

    def _advance_row_alone(
        self,
        row: ActiveRequest,
        tokens: list[int],
        drafted: int,
        accepted: int,
        logprobs: EmittedLogprobs | None,
    ) -> TokenEvent:
        """The row's event; an error event when its processors refuse its tokens or turning them into text fails."""
        kept, finish = _kept_tokens(row, tokens)
        try:
            commit_tokens(row.sampling.processors, kept)
        except Exception as exc:
            log.exception("request %s failed in committing its tokens to its processors", row.request_id)
            return _failure_event(row, f"logits processing failed: {exc}")
        try:
            return self._advance_row(row, kept, finish, drafted, accepted, logprobs)
        except Exception as exc:
            log.exception("request %s failed in detokenising", row.request_id)
            return _failure_event(row, f"detokenising failed: {exc}")

    def _advance_row(
        self,
        row: ActiveRequest,
        kept: list[int],
        finish: FinishReason | None,
        drafted: int,
        accepted: int,
        logprobs: EmittedLogprobs | None,
    ) -> TokenEvent:
        """The row's event for the tokens it keeps: their text (never that of a token that ended it), their
        log-probabilities when it asked for them; its lookup index learns them."""
        shown = kept[:-1] if finish is FinishReason.STOP else kept
        row.generated.extend(kept)
        if row.lookup is not None:
            row.lookup.extend(kept)
        if finish is None and row.remaining_tokens <= 0:
            finish = FinishReason.LENGTH
        delta = row.detokenizer.add(shown)
        if finish is not None:
            delta += row.detokenizer.flush()
        text, hit_stop = row.stop_filter.push(delta)
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
            logprobs=self.token_texts.token_logprobs(logprobs, kept) if logprobs is not None else None,
        )

    def _validate(self, request: GenerationRequest) -> None:
        check_request(request, self.info.context_length)
        vocab = self.parts.vocab_size
        if max(request.prompt_ids) >= vocab or min(request.prompt_ids) < 0:
            raise GorgonError(f"prompt token ids must lie in [0, {vocab})", param="prompt")
        check_token_ids(request.params, vocab)


def _kept_tokens(row: ActiveRequest, tokens: list[int]) -> tuple[list[int], FinishReason | None]:
    """The tokens of `tokens` the row keeps: up to its max_tokens, and up to and including a token that ends it
    (EOS unless ignore_eos, a stop token id), with FinishReason.STOP then. min_tokens needs no rule here: the row's
    processors mask the ending tokens until then, and where a grammar allows nothing but EOS (a complete reply)
    the grammar wins and EOS ends the row."""
    kept: list[int] = []
    for token in tokens[: row.remaining_tokens]:
        kept.append(token)
        if token in row.ending_tokens:
            return kept, FinishReason.STOP
    return kept, None


def _failure_event(row: ActiveRequest, reason: str) -> TokenEvent:
    return TokenEvent(
        request_id=row.request_id,
        token_ids=(),
        text="",
        finish_reason=None,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=len(row.generated),
        error=reason,
    )


def _eos_token_ids(loaded: LoadedModel) -> frozenset[int]:
    ids: set[int] = set()
    configured = loaded.model.generation_config.eos_token_id if loaded.model.generation_config else None
    for value in (configured, loaded.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(item) for item in value)
    return frozenset(ids)
