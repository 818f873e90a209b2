"""The Medusa engine: continuous batching over the per-row KV cache, one forward per `step()`.

A step either prefills newly admitted requests (their first token comes out) or advances every running row by
one speculative step whose shape (tree, chain or plain) the ShapeSelector picks for the current batch size.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

import torch

from gorgon.core.errors import ConfigurationError, ContextOverflowError, GorgonError
from gorgon.engine.batch import ActiveRequest, Batch, CacheLayout, prefill_groups
from gorgon.engine.chat import encode_chat
from gorgon.engine.config import EngineSettings
from gorgon.engine.decode import (
    DraftVocabulary,
    ModelParts,
    RowSampling,
    StepOutcome,
    TypicalAcceptance,
    prefill,
    speculative_step,
)
from gorgon.engine.detok import IncrementalDetokenizer, StopSequenceFilter
from gorgon.engine.interface import ChatMessage, FinishReason, GenerationRequest, ModelInfo, TokenEvent
from gorgon.engine.lean import LeanLlamaDecoder, supports_lean_forward
from gorgon.engine.loader import LoadedModel
from gorgon.engine.lookup import ContextLookup, with_lookup_drafts
from gorgon.engine.medusa import MedusaHeads, has_medusa_heads, load_medusa_heads
from gorgon.engine.packed import can_pack, packed_copy, row_blocked_copy
from gorgon.engine.shapes import ShapeSelector
from gorgon.engine.tree import TREES, TreeBuffers, build_tree_buffers, chain, is_spine_tree, spine_choices

log = logging.getLogger(__name__)

CHAIN_DEPTH = 3  # drafted tokens in the chain shape of Medusa-1 heads (fewer when fewer heads)
# Recurrent heads chain over all their heads: each continues the one before it, so deep drafts stay useful.
HEADS_TREE_FILE = "medusa_choices.json"  # a tree tuned for the heads, written beside them
DRAFT_VOCABULARY_FILE = (
    "draft_vocab.json"  # the heads' draft tokens, most frequent first, written beside them
)


def default_tree_name(device: torch.device) -> str:
    return "mc_sim_7b_63" if device.type == "cuda" else "cpu_12"


def build_shapes(
    settings: EngineSettings, heads: MedusaHeads | None, device: torch.device
) -> list[TreeBuffers]:
    """plain first, then the chain and the configured tree (only those the heads can fill)."""
    shapes = [build_tree_buffers((), name="plain", device=device)]
    if heads is None:
        return shapes
    depth = heads.num_heads if heads.recurrent else min(CHAIN_DEPTH, heads.num_heads)
    shapes.append(build_tree_buffers(chain(depth), name=f"chain_{depth}", device=device))
    tree = _configured_tree(settings, heads, device)
    if tree.num_nodes > 1 and tree.choices != shapes[-1].choices:
        shapes.append(tree)
    return shapes


def _configured_tree(settings: EngineSettings, heads: MedusaHeads, device: torch.device) -> TreeBuffers:
    """The named tree; with `auto`, the tree shipped beside the heads (medusa_choices.json) or the device default.

    Recurrent heads draft along their own best path, so a tree is cut to the nodes that branch off it. A tree
    that only branches off its top-1 chain runs as a lookahead tree (decode.lookahead_step)."""
    shipped = settings.heads_path / HEADS_TREE_FILE
    if settings.medusa_choices == "auto" and shipped.is_file():
        name, choices = "heads_tree", [tuple(path) for path in json.loads(shipped.read_text())]
    else:
        name = default_tree_name(device) if settings.medusa_choices == "auto" else settings.medusa_choices
        if name not in TREES:
            raise GorgonError(
                f"unknown Medusa tree {name!r}; known: {', '.join(TREES)}",
                param="medusa_choices",
                code="configuration_error",
            )
        choices = list(TREES[name])
    usable = [path for path in choices if len(path) <= heads.num_heads]
    if heads.recurrent:
        spine = spine_choices(usable)
        if len(spine) < len(usable):
            log.info("tree %s: %d of %d nodes fit recurrent heads", name, len(spine), len(usable))
        usable = spine
    return build_tree_buffers(usable, name=name, device=device, lookahead=is_spine_tree(usable))


class MedusaEngine:
    """Implements gorgon.engine.interface.Engine on a HF causal LM with optional Medusa heads."""

    def __init__(self, loaded: LoadedModel, heads: MedusaHeads | None, settings: EngineSettings) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.settings = settings
        config = loaded.model.config
        self.parts = build_parts(loaded, heads, settings)
        self.selector = ShapeSelector(build_shapes(settings, heads, loaded.device))
        self.rule = TypicalAcceptance(settings.typical_epsilon, settings.typical_alpha)
        self.layout = CacheLayout(
            num_layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            dtype=loaded.dtype,
            device=loaded.device,
            spare_slots=max(shape.num_nodes for shape in self.selector.shapes) + 1,
        )
        self.eos_token_ids = _eos_token_ids(loaded)
        self.info = ModelInfo(
            name=loaded.name,
            context_length=settings.context_length or int(getattr(config, "max_position_embeddings", 2048)),
            max_batch_size=settings.max_batch_size,
            speculative=heads is not None,
        )
        self.batch: Batch | None = None
        self.waiting: list[ActiveRequest] = []
        self.forward_passes = 0
        log.info(
            "engine ready: %s, speculation %s, shapes %s",
            self.info.name,
            "on" if heads is not None else "off (no Medusa heads)",
            [shape.name for shape in self.selector.shapes],
        )

    # --- the Engine protocol -------------------------------------------------------------------------------

    def encode(self, prompt: str | Sequence[ChatMessage]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))
        return encode_chat(self.tokenizer, self.info.name, prompt)

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
        self.waiting.append(
            ActiveRequest(
                request,
                sampling,
                IncrementalDetokenizer(self.tokenizer),
                StopSequenceFilter(params.stop),
                lookup=self._context_lookup(request) if sampling.speculative else None,
            )
        )

    def _context_lookup(self, request: GenerationRequest) -> ContextLookup | None:
        """The row's lookup index; None with lookup drafts off (then no step looks anything up)."""
        settings = self.settings
        if not settings.lookup_drafts:
            return None
        return ContextLookup(
            request.prompt_ids, min_ngram=settings.lookup_min_ngram, max_ngram=settings.lookup_max_ngram
        )

    def cancel(self, request_id: str) -> None:
        self.waiting = [row for row in self.waiting if row.request_id != request_id]
        if self.batch is not None:
            self.batch = self.batch.filter(rid for rid in self.batch.request_ids if rid != request_id)

    def step(self) -> list[TokenEvent]:
        if self.waiting and len(self.batch or ()) < self.settings.max_batch_size:
            return self._prefill_waiting()
        if self.batch is None:
            return []
        return self._decode_running()

    @property
    def num_active(self) -> int:
        return len(self.waiting) + len(self.batch or ())

    # --- steps ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _prefill_waiting(self) -> list[TokenEvent]:
        room = self.settings.max_batch_size - len(self.batch or ())
        admitted, self.waiting = self.waiting[:room], self.waiting[room:]
        prefilled = [(group, self._prefill(group)) for group in prefill_groups(admitted, self.loaded.device)]
        running = [self.batch] if self.batch is not None else []
        self.batch = Batch.concatenate(running + [batch for _, (batch, _) in prefilled])
        return [
            event for group, (_, outcome) in prefilled for event in self._emit(outcome, drafted=0, rows=group)
        ]

    def _prefill(self, rows: list[ActiveRequest]) -> tuple[Batch, StepOutcome]:
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
    def _decode_running(self) -> list[TokenEvent]:
        batch = self.batch
        speculative_rows = sum(row.sampling.speculative for row in batch.rows)
        shape = self.selector.choose(len(batch), speculative_rows=speculative_rows)
        if batch.draft_topk is None:
            shape = self.selector.plain
        started = time.perf_counter()
        if shape.num_nodes > 1:
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
            want_drafts=self._wants_drafts(len(batch), speculative_rows),
        )
        self.forward_passes += 1
        self.selector.record(
            shape,
            len(batch),
            time.perf_counter() - started - outcome.plain_draft_seconds,
            [
                len(tokens)
                for tokens, row in zip(outcome.emitted, batch.rows, strict=True)
                if row.sampling.speculative
            ],
        )
        batch.next_tokens, batch.draft_topk = outcome.next_tokens, outcome.draft_topk
        batch.first_draft_by_model = outcome.first_draft_by_model
        return self._emit(outcome, drafted=shape.max_depth, rows=list(batch.rows))

    def _wants_drafts(self, batch_size: int, speculative_rows: int) -> bool:
        """Draft for the next step only when the selector would then speculate (drafting costs a projection)."""
        if self.parts.heads is None or speculative_rows == 0:
            return False
        return self.selector.choose(batch_size, speculative_rows=speculative_rows).num_nodes > 1

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
        vocab = self.parts.lm_head.weight.shape[0]
        if max(request.prompt_ids) >= vocab or min(request.prompt_ids) < 0:
            raise GorgonError(f"prompt token ids must lie in [0, {vocab})", param="prompt")


def _draft_vocabulary(
    settings: EngineSettings, heads: MedusaHeads | None, lm_head: torch.nn.Module
) -> DraftVocabulary | None:
    """The draft vocabulary shipped beside heads that share the lm_head, cut to settings.draft_vocab_size."""
    path = settings.heads_path / DRAFT_VOCABULARY_FILE
    if heads is None or heads.own_lm_heads or settings.draft_vocab_size == 0 or not path.is_file():
        return None
    token_ids = json.loads(path.read_text())[: settings.draft_vocab_size]
    vocab = lm_head.weight.shape[0]
    if not token_ids or not all(isinstance(token, int) and 0 <= token < vocab for token in token_ids):
        raise ConfigurationError(f"{path} must list token ids in [0, {vocab})")
    log.info("heads draft over the %d most frequent tokens (%s)", len(token_ids), path)
    return DraftVocabulary.from_lm_head(lm_head, torch.tensor(token_ids, dtype=torch.long))


def build_parts(loaded: LoadedModel, heads: MedusaHeads | None, settings: EngineSettings) -> ModelParts:
    """The modules a step calls, on CPU copies sharing the model's weights whose linears are packed (or, with
    prepacking off, only split into row blocks): engine/packed.py. On CUDA the model's own. A Llama decoder runs
    through the engine's lean forward (engine/lean.py) unless settings.lean_forward is off."""
    decoder, lm_head = loaded.model.get_decoder(), loaded.model.get_output_embeddings()
    embed_tokens = loaded.model.get_input_embeddings()
    vocabulary = _draft_vocabulary(settings, heads, lm_head)
    if loaded.device.type == "cpu":
        wrap = _cpu_linears(loaded, speculates=heads is not None, settings=settings)
        if vocabulary is not None:
            vocabulary = DraftVocabulary(vocabulary.token_ids, wrap(vocabulary.projection))
        decoder, lm_head = wrap(decoder), wrap(lm_head)
        heads = wrap(heads) if heads is not None else None
    if settings.lean_forward and supports_lean_forward(decoder):
        decoder = LeanLlamaDecoder(decoder)
    return ModelParts(decoder, lm_head, heads, vocabulary, embed_tokens)


def _cpu_linears(
    loaded: LoadedModel, *, speculates: bool, settings: EngineSettings
) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """packed_copy where oneDNN packs this dtype and prepacking is on, else row_blocked_copy; an engine that
    speculates on unpacked products is warned about (their rows round by row count on some CPUs)."""
    if settings.prepack_weights and can_pack(loaded.device, loaded.dtype):
        return packed_copy
    if speculates:
        reason = "oneDNN cannot here" if settings.prepack_weights else "GORGON_ENGINE_PREPACK_WEIGHTS=false"
        log.warning(
            "linear weights not prepacked (%s): on some CPUs unpacked products round a row by how many rows "
            "share them, so greedy speculative output can differ from plain greedy at near-ties (docs/engine.md)",
            reason,
        )
    return row_blocked_copy


def _eos_token_ids(loaded: LoadedModel) -> frozenset[int]:
    ids: set[int] = set()
    configured = loaded.model.generation_config.eos_token_id if loaded.model.generation_config else None
    for value in (configured, loaded.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(item) for item in value)
    return frozenset(ids)


def load_heads_for(loaded: LoadedModel, settings: EngineSettings) -> MedusaHeads | None:
    """The Medusa heads in settings.heads_path checked against the model, or None (speculation off, logged)."""
    if not settings.speculation:
        log.info("speculation disabled by settings: plain decoding")
        return None
    if not has_medusa_heads(settings.heads_path):
        log.info("no Medusa heads in %s: speculation off, plain decoding", settings.heads_path)
        return None
    heads = load_medusa_heads(settings.heads_path, dtype=loaded.dtype, device=loaded.device)
    lm_head = loaded.model.get_output_embeddings()
    vocab, hidden = lm_head.weight.shape
    if heads.hidden_size != hidden or (heads.own_lm_heads and heads.vocab_size != vocab):
        raise ConfigurationError(
            f"Medusa heads in {settings.heads_path} were built for hidden size {heads.hidden_size} / vocabulary "
            f"{heads.vocab_size}, but {loaded.name} has {hidden} / {vocab}"
        )
    return heads
