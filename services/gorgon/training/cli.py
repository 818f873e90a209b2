"""`gorgon train-heads`: train Medusa heads for the default model by self-distillation.

Top-level imports stay light (no torch); the pipeline is imported inside `run`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gorgon.core.errors import ConfigurationError
from gorgon.engine.config import DEFAULT_HEADS_PATH
from gorgon.training.settings import VERIFY_COST_MS, DataSettings, RunSettings, TrainSettings

log = logging.getLogger(__name__)

DEFAULT_WORK_DIR = Path.home() / ".cache" / "gorgon" / "train-heads"
DATA_DEFAULTS = DataSettings()
TRAIN_DEFAULTS = TrainSettings()


def _cost_table(text: str) -> tuple[tuple[int, float], ...]:
    """'1:40,8:53' -> ((1, 40.0), (8, 53.0))."""
    try:
        points = tuple((int(q), float(ms)) for q, ms in (item.split(":") for item in text.split(",")))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected tokens:ms pairs like 1:40,8:53, got {text!r}") from exc
    if len(points) < 2:
        raise argparse.ArgumentTypeError("the cost table needs at least two points")
    return points


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (self-distillation)")
    data.add_argument("--num-prompts", type=int, default=DATA_DEFAULTS.num_prompts, help="training prompts")
    data.add_argument("--held-out-prompts", type=int, default=DATA_DEFAULTS.held_out_prompts)
    data.add_argument("--max-new-tokens", type=int, default=DATA_DEFAULTS.max_new_tokens)
    data.add_argument("--generation-batch-size", type=int, default=DATA_DEFAULTS.generation_batch_size)
    data.add_argument(
        "--text-file", type=Path, default=None, help="train on this text instead of the prompt set"
    )
    data.add_argument("--chunk-tokens", type=int, default=DATA_DEFAULTS.chunk_tokens, help="with --text-file")
    train = parser.add_argument_group("training")
    train.add_argument("--num-heads", type=int, default=TRAIN_DEFAULTS.num_heads)
    train.add_argument("--num-layers", type=int, default=TRAIN_DEFAULTS.num_layers, help="ResBlocks per head")
    train.add_argument("--own-lm-heads", action="store_true", help="train a vocabulary projection per head")
    train.add_argument(
        "--recurrent",
        action="store_true",
        help="recurrent heads: head k also reads the token before it and head k-1's state (drafts along "
        "their best path; tree search limited to nodes branching off it)",
    )
    train.add_argument("--epochs", type=float, default=TRAIN_DEFAULTS.epochs)
    train.add_argument("--batch-tokens", type=int, default=TRAIN_DEFAULTS.batch_tokens)
    train.add_argument("--learning-rate", type=float, default=TRAIN_DEFAULTS.learning_rate)
    train.add_argument("--warmup-ratio", type=float, default=TRAIN_DEFAULTS.warmup_ratio)
    train.add_argument(
        "--loss-decay", type=float, default=TRAIN_DEFAULTS.loss_decay, help="head k weighs decay^k"
    )
    train.add_argument(
        "--train-vocab",
        choices=("sampled", "full"),
        default=TRAIN_DEFAULTS.train_vocab,
        help="softmax over the target tokens plus sampled negatives (fast) or over the full vocabulary",
    )
    train.add_argument(
        "--negative-samples",
        type=int,
        default=TRAIN_DEFAULTS.negative_samples,
        help="with --train-vocab sampled: other tokens drawn per step",
    )
    train.add_argument(
        "--soft-target-weight",
        type=float,
        default=TRAIN_DEFAULTS.soft_target_weight,
        help="0-1: weight of the base model's distribution as each head's target against its greedy token",
    )
    train.add_argument("--seed", type=int, default=TRAIN_DEFAULTS.seed)
    train.add_argument("--checkpoint-every", type=int, default=TRAIN_DEFAULTS.checkpoint_every, help="steps")
    out = parser.add_argument_group("output")
    out.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="data shards and checkpoint")
    out.add_argument("--output", type=Path, default=DEFAULT_HEADS_PATH, help="heads, tree and report")
    out.add_argument(
        "--export-own-projections",
        type=Path,
        default=None,
        help="also write the heads with the lm_head copied into each head (FasterDecoding's original layout)",
    )
    out.add_argument(
        "--tree-only",
        action="store_true",
        help="no training: grow the tree again for the heads already in --output, on the held-out data and "
        "--verify-cost (measure it with `gorgon bench step-cost`)",
    )
    out.add_argument(
        "--tree-max-nodes", type=int, default=RunSettings.__dataclass_fields__["tree_max_nodes"].default
    )
    out.add_argument(
        "--verify-cost",
        type=_cost_table,
        default=VERIFY_COST_MS,
        help="measured forward latency per tree size, tokens:ms pairs",
    )
    out.add_argument(
        "--branching-cost",
        type=float,
        default=RunSettings.__dataclass_fields__["branching_cost_ms"].default,
        help="extra ms per step of a branching tree over a chain (the tree search then may pick a chain)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is fastest on a busy CPU)"
    )


def _check(args: argparse.Namespace) -> None:
    positive = ("num_prompts", "held_out_prompts", "max_new_tokens", "generation_batch_size", "num_heads")
    for name in (*positive, "batch_tokens", "chunk_tokens", "checkpoint_every", "tree_max_nodes"):
        if getattr(args, name) < 1:
            raise ConfigurationError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    if args.epochs <= 0 or args.learning_rate <= 0:
        raise ConfigurationError("--epochs and --learning-rate must be positive")
    if args.own_lm_heads and args.train_vocab != "full":
        raise ConfigurationError("--own-lm-heads trains every head's projection: add --train-vocab full")
    if not 0.0 <= args.soft_target_weight <= 1.0:
        raise ConfigurationError(f"--soft-target-weight must lie in [0, 1], got {args.soft_target_weight}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    import torch  # heavy import, only when the command runs

    from gorgon.training.pipeline import retune_tree, run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = RunSettings(
        work_dir=args.work_dir,
        output=args.output,
        data=DataSettings(
            num_prompts=args.num_prompts,
            held_out_prompts=args.held_out_prompts,
            max_new_tokens=args.max_new_tokens,
            generation_batch_size=args.generation_batch_size,
            text_file=args.text_file,
            chunk_tokens=args.chunk_tokens,
        ),
        train=TrainSettings(
            num_heads=args.num_heads,
            num_layers=args.num_layers,
            own_lm_heads=args.own_lm_heads,
            recurrent=args.recurrent,
            epochs=args.epochs,
            batch_tokens=args.batch_tokens,
            learning_rate=args.learning_rate,
            warmup_ratio=args.warmup_ratio,
            loss_decay=args.loss_decay,
            train_vocab=args.train_vocab,
            negative_samples=args.negative_samples,
            soft_target_weight=args.soft_target_weight,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
        ),
        export_own_projections=args.export_own_projections,
        tree_max_nodes=args.tree_max_nodes,
        cost_table=args.verify_cost,
        branching_cost_ms=args.branching_cost,
    )
    if args.tree_only:
        report = retune_tree(settings)
        tree = report["tree"]
        summary = {
            "output": str(args.output),
            "tree_nodes": tree["best_nodes"],
            "expected_tokens_per_step": round(tree["expected_tokens_per_step"], 3),
            "decoded_tokens_per_step": round(tree["decoded_tokens_per_step"], 3),
            "medusa_choices": tree["medusa_choices"],
        }
        print(json.dumps(summary))  # the command's result, on stdout
        return 0
    report = run_training(settings)
    summary = {
        "output": str(args.output),
        "held_out_top1": [round(head["top1"], 3) for head in report["held_out_accuracy"]],
        "held_out_top5": [round(head["top5"], 3) for head in report["held_out_accuracy"]],
        "tree_nodes": report["tree"]["best_nodes"],
        "expected_tokens_per_step": round(report["tree"]["expected_tokens_per_step"], 3),
        "decoded_tokens_per_step": round(report["tree"]["decoded_tokens_per_step"], 3),
        "minutes": round(report["timings_seconds"]["total"] / 60, 1),
    }
    print(json.dumps(summary))  # the command's result, on stdout
    return 0
