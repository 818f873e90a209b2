"""The frozen base model the heads are trained against, loaded by the engine's own loader.

The model is loaded as the engine serves it (bf16 on CPU), without DeepSpeed: the distillation data is generated
by the serving engine itself, so the heads learn the trajectories and hidden states they meet when serving.
Training itself runs in float32, on a float32 copy of the lm_head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Final, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gorgon.engine.config import EngineSettings
from gorgon.engine.loader import load_model_and_tokenizer

log = logging.getLogger(__name__)

SERVING_DTYPE: Final = "auto"  # the engine's own default: bf16 on CPU, fp16 on CUDA


@dataclass(frozen=True)
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

    @cached_property
    def lm_head(self) -> torch.nn.Linear:
        """A float32 copy of the model's lm_head, frozen: what the heads are trained and evaluated against."""
        served = self.model.lm_head
        copy = torch.nn.Linear(served.in_features, served.out_features, bias=served.bias is not None)
        with torch.no_grad():
            copy.weight.copy_(served.weight.float())
            if served.bias is not None:
                copy.bias.copy_(served.bias.float())
        return copy.requires_grad_(False)

    @cached_property
    def embed_tokens(self) -> torch.nn.Embedding:
        """A float32 copy of the input embeddings, frozen: what recurrent heads read their tokens through."""
        served = cast(torch.nn.Embedding, self.model.get_input_embeddings())
        copy = torch.nn.Embedding(served.num_embeddings, served.embedding_dim)
        with torch.no_grad():
            copy.weight.copy_(served.weight.float())
        return copy.requires_grad_(False)

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
    """The base model (default: the engine's default model), frozen, in eval mode, in the engine's CPU dtype."""
    settings = EngineSettings(
        model=model,
        gguf_file=gguf_file,
        device="cpu",
        dtype=SERVING_DTYPE,
        use_deepspeed=False,
        speculation=False,
    )
    loaded = load_model_and_tokenizer(settings)
    return BaseModel(model=loaded.model, tokenizer=loaded.tokenizer, name=loaded.name)
