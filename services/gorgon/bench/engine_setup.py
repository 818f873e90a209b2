"""The engine the engine benchmarks load: its settings from their flags, and stand-in heads when the model has
no trained ones; the model loaded once under a plain engine and a Medusa one."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from gorgon.engine.config import EngineSettings
from gorgon.engine.drafting.checkpoint import load_heads_for
from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.engine.loader import LoadedModel, load_model_and_tokenizer
from gorgon.engine.medusa_engine import MedusaEngine

log = logging.getLogger(__name__)

UNTRAINED_HEADS = 4


def settings_from_args(args: argparse.Namespace) -> EngineSettings:
    """EngineSettings (environment and defaults) with the flags the command line set on top."""
    overrides: dict[str, Any] = {"device": args.device, "dtype": args.dtype}
    if args.model:
        overrides["model"] = args.model
    if args.heads:
        overrides["heads_path"] = args.heads
    if args.no_deepspeed:
        overrides["use_deepspeed"] = False
    if args.medusa_choices:
        overrides["medusa_choices"] = args.medusa_choices
    return EngineSettings(**overrides)


def untrained_heads(loaded: LoadedModel) -> MedusaHeads:
    """Heads that reuse lm_head with identity ResBlocks: they draft the base model's own next-token guess."""
    config = loaded.model.config
    heads = MedusaHeads(config.hidden_size, config.vocab_size, UNTRAINED_HEADS, own_lm_heads=False)
    return heads.to(device=loaded.device, dtype=loaded.dtype).eval().requires_grad_(False)


def plain_and_medusa_engines(args: argparse.Namespace) -> tuple[LoadedModel, MedusaEngine, MedusaEngine]:
    """The model the flags name, loaded once, under an engine without heads (plain) and one with them (Medusa);
    untrained stand-in heads when the model has none."""
    settings = settings_from_args(args)
    loaded = load_model_and_tokenizer(settings)
    heads = load_heads_for(loaded, settings)
    if heads is None:
        log.warning("no Medusa heads for %s: benchmarking untrained heads (they accept little)", loaded.name)
        heads = untrained_heads(loaded)
    return loaded, MedusaEngine(loaded, None, settings), MedusaEngine(loaded, heads, settings)
