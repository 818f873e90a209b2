"""Every default of head training, in one light module (no torch) that the CLI and the pipeline share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TrainVocab = Literal["sampled", "full"]

VERIFY_COST_MS: tuple[tuple[int, float], ...] = (
    (1, 68.5),
    (2, 82.2),
    (4, 89.1),
    (6, 89.2),
    (8, 90.8),
    (12, 94.6),
    (16, 97.3),
    (24, 115.8),
    (32, 119.7),
    (40, 174.1),
)
"""Median engine step of SmolLM2-135M bf16 at batch 1 by tree size (nodes, ms) on the 2-core dev CPU, measured by
`gorgon bench step-cost`. Only the ratios matter to the tree search."""

BRANCHING_COST_MS = 10.0
"""Extra step time of a tree with nodes deeper off its top-1 chain than (0, ..., 0, r), over a chain of as many
tokens (the per-node key gather of engine/attention.py), SmolLM2 bf16 batch 1 on the dev CPU: 4-node tree 1.28x
plain against 1.49x for a 4-deep chain at 1.55 / 1.49 tokens per step. Spine trees do not pay it:
they run as lookahead trees."""


@dataclass(frozen=True, slots=True)
class DataSettings:
    num_prompts: int = 640
    held_out_prompts: int = 64
    max_new_tokens: int = 160
    generation_batch_size: int = 32
    text_file: Path | None = None
    chunk_tokens: int = 256


@dataclass(frozen=True, slots=True)
class TrainSettings:
    num_heads: int = 4
    num_layers: int = 1
    own_lm_heads: bool = False
    recurrent: bool = False
    epochs: float = 3.0
    batch_tokens: int = 256
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    loss_decay: float = 0.8
    train_vocab: TrainVocab = "sampled"
    negative_samples: int = 4096
    soft_target_weight: float = 0.0  # 0: hard targets only (the shipped heads' recipe); 1: soft targets only
    seed: int = 0
    checkpoint_every: int = 100


@dataclass(frozen=True, slots=True)
class RunSettings:
    work_dir: Path
    output: Path
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    export_own_projections: Path | None = None
    tree_max_nodes: int = 63
    cost_table: tuple[tuple[int, float], ...] = VERIFY_COST_MS
    branching_cost_ms: float = BRANCHING_COST_MS
