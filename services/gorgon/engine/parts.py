"""The modules a decode step calls, and the kernels they run on: the decoder body, the vocabulary projection, the
Medusa heads and their draft vocabulary.

On CPU they are copies sharing the model's weights whose linears are prepacked for oneDNN, or with prepacking off
only split into row blocks (engine/kernels/packed.py), with their projections of one input fused
(engine/kernels/fused.py); on other devices the model's own modules. A Llama decoder runs through the engine's
lean forward (engine/kernels/lean.py) unless settings.lean_forward is off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from torch import nn

from gorgon.engine.attention import use_row_attention
from gorgon.engine.config import EngineSettings
from gorgon.engine.drafting.checkpoint import load_draft_vocabulary
from gorgon.engine.drafting.heads import DraftVocabulary, MedusaHeads
from gorgon.engine.kernels.lean import LeanLlamaDecoder, supports_lean_forward
from gorgon.engine.kernels.packed import can_pack, packed_copy, row_blocked_copy
from gorgon.engine.loader import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelParts:
    """The pieces of a causal LM the engine calls: decoder body, vocabulary projection, Medusa heads."""

    decoder: nn.Module
    lm_head: nn.Module
    heads: MedusaHeads | None
    draft_vocabulary: DraftVocabulary | None = None
    embed_tokens: nn.Module | None = (
        None  # the input embeddings (recurrent heads read their tokens' embeddings)
    )

    def __post_init__(self) -> None:
        use_row_attention(self.decoder)  # on CPU tree forwards need per-node key order (engine/attention.py)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.get_parameter("weight").shape[0])


def build_parts(loaded: LoadedModel, heads: MedusaHeads | None, settings: EngineSettings) -> ModelParts:
    """The parts of `loaded` on the kernels of its device (see the module docstring)."""
    decoder, lm_head = loaded.model.get_decoder(), loaded.model.get_output_embeddings()
    embed_tokens = loaded.model.get_input_embeddings()
    vocabulary = load_draft_vocabulary(settings, heads, lm_head)
    if loaded.device.type == "cpu":
        wrap = _cpu_linears(loaded, speculates=heads is not None, settings=settings)
        if vocabulary is not None:
            vocabulary = DraftVocabulary(vocabulary.token_ids, wrap(vocabulary.projection))
        decoder, lm_head = wrap(decoder), wrap(lm_head)
        heads = cast(MedusaHeads, wrap(heads)) if heads is not None else None  # a copy of heads is heads
    if settings.lean_forward and supports_lean_forward(decoder):
        decoder = LeanLlamaDecoder(decoder)
    return ModelParts(decoder, lm_head, heads, vocabulary, embed_tokens)


def _cpu_linears(
    loaded: LoadedModel, *, speculates: bool, settings: EngineSettings
) -> Callable[[nn.Module], nn.Module]:
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
