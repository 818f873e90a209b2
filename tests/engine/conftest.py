"""Fixtures: a tiny random Llama, a byte-level tokenizer, and engines on them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from engine_tiny import byte_tokenizer, tiny_llama
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from gorgon.engine.config import EngineSettings
from gorgon.engine.loader import LoadedModel
from gorgon.engine.medusa import MedusaHeads
from gorgon.engine.medusa_engine import MedusaEngine
from gorgon.engine.shapes import ShapeSelector
from gorgon.engine.tree import TreeBuffers


class CyclingSelector(ShapeSelector):
    """Runs the engine's shapes in turn, one per step (plain, chain, tree, plain, ...): every shape and every
    transition between shapes in every batch, whatever the timing-based selector would pick on this machine.

    A decoding step asks twice: for its own shape, then (`_wants_drafts`) for the next step's, so call c
    answers shape (c + 1) // 2 of the cycle."""

    calls: int = 0

    def choose(self, batch_size: int, *, speculative_rows: int) -> TreeBuffers:
        if speculative_rows == 0:
            return self.plain
        self.calls += 1
        return self.shapes[(self.calls // 2) % len(self.shapes)]


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
        heads: MedusaHeads | None = None, *, cycle_shapes: bool = False, **settings: object
    ) -> MedusaEngine:
        """`cycle_shapes`: run every shape in turn (CyclingSelector) instead of the timing-based choice."""
        settings.setdefault("heads_path", empty_heads_dir)
        loaded = LoadedModel(
            model=tiny_model,
            forward=tiny_model,
            tokenizer=tokenizer,
            name="tiny-llama",
            device=torch.device("cpu"),
            dtype=torch.float32,
            uses_deepspeed=False,
        )
        engine = MedusaEngine(loaded, heads, EngineSettings(use_deepspeed=False, **settings))
        if cycle_shapes:
            engine.selector = CyclingSelector(engine.selector.shapes)
        return engine

    return build
