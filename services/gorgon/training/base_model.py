"""The frozen base model the heads are trained against, loaded by the engine's own loader.

Training reads the model in float32 without DeepSpeed: it needs the bare HF module (for the final-norm hook
and `generate`), and float32 hidden states are the better-conditioned training input for heads served in any
dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gorgon.engine.config import EngineSettings
from gorgon.engine.loader import load_model_and_tokenizer

log = logging.getLogger(__name__)

TRAINING_DTYPE = "float32"


@dataclass(frozen=True, slots=True)
class BaseModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.lm_head.weight.shape[0])

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.lm_head

    @property
    def final_norm(self) -> torch.nn.Module:
        """The module whose output is the hidden state the lm_head (and every Medusa head) reads."""
        return self.model.model.norm

    @property
    def stop_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return {int(token_id) for token_id in ids if token_id is not None}


def load_base_model(model: str | None = None, gguf_file: str | None = None) -> BaseModel:
    """The base model (default: the engine's default model), frozen, in eval mode, float32 on CPU."""
    settings = EngineSettings(
        model=model,
        gguf_file=gguf_file,
        device="cpu",
        dtype=TRAINING_DTYPE,
        use_deepspeed=False,
        speculation=False,
    )
    loaded = load_model_and_tokenizer(settings)
    return BaseModel(model=loaded.model, tokenizer=loaded.tokenizer, name=loaded.name)
