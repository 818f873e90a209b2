"""Fixtures: a tiny random Llama, a byte-level tokenizer, engines on them, and a tiny Vicuna-shaped model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from engine_tiny import CyclingSelector, byte_tokenizer, tiny_llama
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from vicuna_tiny import write_tiny_vicuna

from gorgon.engine.config import EngineSettings
from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.engine.loader import LoadedModel
from gorgon.engine.medusa_engine import MedusaEngine


@pytest.fixture(scope="session")
def tiny_model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


EngineFactory = Callable[..., MedusaEngine]


@pytest.fixture
def make_engine(
    tiny_model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, tmp_path_factory: pytest.TempPathFactory
) -> EngineFactory:
    """Engines on the tiny model; heads_path defaults to an empty directory (the shipped tree and draft
    vocabulary belong to SmolLM2)."""
    empty_heads_dir = tmp_path_factory.mktemp("no-shipped-files")

    def build(
        heads: MedusaHeads | None = None,
        *,
        cycle_shapes: bool = False,
        model: LlamaForCausalLM | None = None,
        **settings: object,
    ) -> MedusaEngine:
        """`cycle_shapes`: run every shape in turn (CyclingSelector) instead of the timing-based choice;
        `model`: another tiny model than `tiny_model`."""
        settings.setdefault("heads_path", empty_heads_dir)
        model = model or tiny_model
        loaded = LoadedModel(
            model=model,
            forward=model,
            tokenizer=tokenizer,
            name="tiny-llama",
            device=torch.device("cpu"),
            dtype=torch.float32,
            uses_deepspeed=False,
        )
        engine = MedusaEngine(loaded, heads, EngineSettings(use_deepspeed=False, **settings))
        if cycle_shapes:
            engine.scheduler.selector = CyclingSelector(engine.scheduler.selector.shapes)
        return engine

    return build


@pytest.fixture(scope="session")
def vicuna_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model in Vicuna v1.3's layout, in a directory whose name says nothing of Vicuna (as a model baked
    into an image at /opt/gorgon/model)."""
    directory = tmp_path_factory.mktemp("baked") / "model"
    write_tiny_vicuna(directory)
    return directory
