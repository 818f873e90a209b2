"""Fixtures of the benchmark tests: an engine on the engine tests' tiny random Llama (tests/engine/engine_tiny.py),
for the benchmark code that drives a real engine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from gorgon.engine.config import EngineSettings
from gorgon.engine.loader import LoadedModel
from gorgon.engine.medusa_engine import MedusaEngine

# engine_tiny lives with the engine tests, whose folder pytest puts on sys.path only when it collects them
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_tiny import CyclingSelector, byte_tokenizer, random_heads, tiny_llama


@pytest.fixture
def cycling_engine(tmp_path_factory: pytest.TempPathFactory) -> MedusaEngine:
    """A MedusaEngine with random heads that runs its speculation shapes in turn (CyclingSelector); heads_path
    is an empty directory (the shipped tree and draft vocabulary belong to SmolLM2)."""
    model = tiny_llama()
    loaded = LoadedModel(
        model=model,
        forward=model,
        tokenizer=byte_tokenizer(),
        name="tiny-llama",
        device=torch.device("cpu"),
        dtype=torch.float32,
        uses_deepspeed=False,
    )
    settings = EngineSettings(use_deepspeed=False, heads_path=tmp_path_factory.mktemp("no-shipped-files"))
    engine = MedusaEngine(loaded, random_heads(), settings)
    engine.scheduler.selector = CyclingSelector(engine.scheduler.selector.shapes)
    return engine
