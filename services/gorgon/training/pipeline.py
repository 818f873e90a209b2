"""`gorgon train-heads` end to end: distillation data → head training → held-out report → tuned tree → files.

Every stage caches its output under the work directory (data shards, training checkpoint), so rerunning the
same command after an interruption continues where it stopped, and rerunning it after completion only
re-evaluates.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import cast

import torch
from torch import nn

from gorgon.core.errors import ConfigurationError
from gorgon.engine.drafting.checkpoint import (
    DRAFT_VOCABULARY_FILE,
    HEADS_TREE_FILE,
    load_medusa_heads,
    save_medusa_heads,
)
from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.training.base_model import BaseModel, load_base_model
from gorgon.training.distill import (
    DistillSettings,
    Sequences,
    build_shards,
    chat_prompt_ids,
    generate_greedy,
    teacher_forced,
    text_file_chunks,
)
from gorgon.training.evaluate import HeadAccuracy, TreeSearch, grow_tree, head_accuracies, target_ranks
from gorgon.training.prompts import Split, prompts_for
from gorgon.training.settings import DataSettings, RunSettings
from gorgon.training.trainer import Positions, Trainer, head_projection, head_targets, new_heads

log = logging.getLogger(__name__)

REPORT_NAME = "training_report.json"
DRAFT_VOCABULARY_SIZE = (
    16384  # tokens written to draft_vocab.json; the engine uses a prefix (draft_vocab_size)
)
MEDUSA_VICUNA_7B_TOP1 = (0.56, 0.32, 0.20, 0.15, 0.12)
"""Per-head top-1 accuracy of Medusa-1's heads on Vicuna-7B (Medusa paper), for comparison in the report."""


SHARD_BATCHES = 4  # generation batches per shard: rows that finish early are refilled from the same shard


def _prompt_batch_maker(base: BaseModel, max_new_tokens: int, batch_size: int):
    def make(shard: Sequence[str]) -> Sequences:
        prompts = [chat_prompt_ids(base, text) for text in shard]
        return generate_greedy(base, prompts, max_new_tokens, max_batch_size=batch_size)

    return make


def distillation_data(base: BaseModel, settings: DataSettings, work_dir: Path) -> tuple[Sequences, Sequences]:
    """(training, held-out) sequences, generated or read back from the work directory's shards."""
    if settings.text_file is not None:
        return _text_file_data(base, settings.text_file, settings, work_dir)
    return (
        prompt_split_data(base, settings, work_dir, Split.TRAIN, settings.num_prompts),
        prompt_split_data(base, settings, work_dir, Split.HELD_OUT, settings.held_out_prompts),
    )


def prompt_split_data(
    base: BaseModel, settings: DataSettings, work_dir: Path, split: Split, count: int
) -> Sequences:
    """The base model's responses to the first `count` prompts of `split`, generated or read back."""
    prompts = prompts_for(split, count)
    if len(prompts) < count:
        raise ConfigurationError(f"the prompt set has only {len(prompts)} {split} prompts, {count} asked")
    source = f"prompts:{split}:engine:{str(base.model.dtype).removeprefix('torch.')}"
    batch = settings.generation_batch_size
    distill = DistillSettings(base.name, source, settings.max_new_tokens, batch * SHARD_BATCHES)
    maker = _prompt_batch_maker(base, settings.max_new_tokens, batch)
    return build_shards(work_dir / "data" / str(split), distill, prompts, maker, f"distilling {split}")


def _text_file_data(
    base: BaseModel, text_file: Path, settings: DataSettings, work_dir: Path
) -> tuple[Sequences, Sequences]:
    """Chunks of a text file; the last tenth of the chunks (at least one) is held out."""
    chunks = text_file_chunks(base, text_file, settings.chunk_tokens)
    if len(chunks) < 2:
        raise ConfigurationError(f"{text_file} yields one chunk; need two (one is held out)")
    held_out_count = max(1, len(chunks) // 10)
    parts = {"train": chunks[:-held_out_count], "held-out": chunks[-held_out_count:]}
    results = []
    for split, split_chunks in parts.items():
        source = f"text:{text_file.resolve()}:{split}:{len(split_chunks)}x{settings.chunk_tokens}"
        distill = DistillSettings(base.name, source, 0, settings.generation_batch_size)
        maker = functools.partial(teacher_forced, base)
        results.append(
            build_shards(
                work_dir / "data" / f"text-{split}", distill, split_chunks, maker, f"reading {split}"
            )
        )
    return results[0], results[1]


def most_frequent_tokens(response_ids: torch.Tensor, size: int) -> list[int]:
    """Token ids by falling frequency in the responses (ties: lower id first), at most `size` of them."""
    counts = torch.bincount(response_ids.long())
    present = torch.nonzero(counts).flatten()
    order = sorted(present.tolist(), key=lambda token: (-int(counts[token]), token))
    return order[:size]


def draft_coverage(response_ids: torch.Tensor, vocabulary: Sequence[int]) -> float:
    """Share of response tokens inside `vocabulary`."""
    inside = torch.isin(response_ids.long(), torch.tensor(list(vocabulary), dtype=torch.long))
    return float(inside.float().mean())


def export_with_own_projections(heads: MedusaHeads, lm_head: torch.nn.Linear) -> MedusaHeads:
    """The same heads with the shared lm_head copied into every head (FasterDecoding's original layout)."""
    if heads.own_lm_heads:
        return heads
    full = MedusaHeads(
        heads.hidden_size,
        heads.vocab_size,
        heads.num_heads,
        heads.num_layers,
        own_lm_heads=True,
        recurrent=heads.recurrent,
    )
    with torch.no_grad():
        for shared_head, own_head in zip(heads.heads, full.heads, strict=True):
            own_blocks = cast(nn.Sequential, own_head)
            own_blocks[: heads.num_layers].load_state_dict(shared_head.state_dict(), strict=True)
            head_projection(own_head).weight.copy_(lm_head.weight)
    return full.eval()


def _tree_report(settings: RunSettings, search: TreeSearch) -> dict:
    return {
        "cost_table_ms": [list(point) for point in settings.cost_table],
        "branching_cost_ms": settings.branching_cost_ms,
        "best_nodes": search.best.nodes,
        "expected_tokens_per_step": search.best.tokens_per_step,
        "decoded_tokens_per_step": search.best.decoded_tokens_per_step,
        "expected_relative_speed": search.best.relative_speed,
        "medusa_choices": search.best_choices,
        "curve": [asdict(point) for point in search.curve],
    }


def _report(
    settings: RunSettings,
    base: BaseModel,
    stats: dict,
    *,
    accuracies: list[HeadAccuracy],
    search: TreeSearch,
    timings: dict[str, float],
) -> dict:
    return {
        "base_model": base.name,
        "settings": json.loads(json.dumps(asdict(settings), default=str)),
        "data": stats,
        "timings_seconds": timings,
        "held_out_accuracy": [
            asdict(accuracy) | {"medusa_vicuna_7b_top1": _vicuna_top1(accuracy.head)}
            for accuracy in accuracies
        ],
        "tree": _tree_report(settings, search),
    }


def _vicuna_top1(head: int) -> float | None:
    return MEDUSA_VICUNA_7B_TOP1[head] if head < len(MEDUSA_VICUNA_7B_TOP1) else None


def run_training(settings: RunSettings, base: BaseModel | None = None) -> dict:
    """The whole pipeline; returns the report (also written beside the heads)."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    base = base or load_base_model()
    timings["load_model"] = time.monotonic() - started
    mark = time.monotonic()
    train_sequences, held_out_sequences = distillation_data(base, settings.data, settings.work_dir)
    timings["distillation"] = time.monotonic() - mark
    mark = time.monotonic()
    train_positions = head_targets(train_sequences, settings.train.num_heads)
    held_out_positions = head_targets(held_out_sequences, settings.train.num_heads)
    heads = new_heads(settings.train, base.lm_head, base.hidden_size, base.vocab_size)
    embed_tokens = base.embed_tokens if settings.train.recurrent else None
    trainer = Trainer(settings.train, heads, base.lm_head, train_positions, settings.work_dir, embed_tokens)
    trainer.resume()
    result = trainer.run()
    timings["training"] = time.monotonic() - mark
    mark = time.monotonic()
    accuracies, search = evaluate_heads(settings, base, result.heads, held_out_positions)
    timings["evaluation"] = time.monotonic() - mark
    timings["total"] = time.monotonic() - started
    stats = {
        "train_responses": int(train_sequences.lengths.numel()),
        "train_positions": len(train_positions),
        "held_out_responses": int(held_out_sequences.lengths.numel()),
        "held_out_positions": len(held_out_positions),
        "training_vocabulary": int(trainer.vocabulary.numel()),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "final_head_losses": result.final_head_losses,
    }
    draft_tokens = most_frequent_tokens(train_sequences.response_ids, DRAFT_VOCABULARY_SIZE)
    stats["draft_vocabulary_held_out_coverage"] = {
        str(size): draft_coverage(held_out_sequences.response_ids, draft_tokens[:size])
        for size in (4096, 8192, DRAFT_VOCABULARY_SIZE)
    }
    report = _report(settings, base, stats, accuracies=accuracies, search=search, timings=timings)
    _write_outputs(settings, base, result.heads, report, search.best_choices)
    (settings.output / DRAFT_VOCABULARY_FILE).write_text(json.dumps(draft_tokens) + "\n")
    return report


def evaluate_heads(
    settings: RunSettings, base: BaseModel, heads: MedusaHeads, held_out: Positions
) -> tuple[list[HeadAccuracy], TreeSearch]:
    """Per-head accuracy on held-out positions, and the tree grown from them for settings' cost table."""
    embed_tokens = base.embed_tokens if heads.recurrent else None
    ranks = target_ranks(heads, base.lm_head, held_out, embed_tokens=embed_tokens)
    search = grow_tree(
        ranks,
        settings.tree_max_nodes,
        cost_table=settings.cost_table,
        spine_only=heads.recurrent,
        branching_cost_ms=settings.branching_cost_ms,
        response_positions=held_out.response_positions,
    )
    return head_accuracies(ranks, held_out.targets), search


def retune_tree(settings: RunSettings, base: BaseModel | None = None) -> dict:
    """Grow the tree again for the heads already in settings.output (no training): held-out data only, this
    cost table. Rewrites medusa_choices.json and the report's tree and accuracy; returns the report."""
    started = time.monotonic()
    base = base or load_base_model()
    heads = load_medusa_heads(settings.output)
    if settings.data.text_file is not None:
        held_out_sequences = distillation_data(base, settings.data, settings.work_dir)[1]
    else:
        held_out_sequences = prompt_split_data(
            base, settings.data, settings.work_dir, Split.HELD_OUT, settings.data.held_out_prompts
        )
    held_out = head_targets(held_out_sequences, heads.num_heads)
    accuracies, search = evaluate_heads(settings, base, heads, held_out)
    report_path = settings.output / REPORT_NAME
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"base_model": base.name}
    report["held_out_accuracy"] = [
        asdict(accuracy) | {"medusa_vicuna_7b_top1": _vicuna_top1(accuracy.head)} for accuracy in accuracies
    ]
    report["tree"] = _tree_report(settings, search) | {"retuned_seconds": time.monotonic() - started}
    (settings.output / HEADS_TREE_FILE).write_text(json.dumps(search.best_choices) + "\n")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("tree for the heads in %s regrown: %d nodes", settings.output, search.best.nodes)
    return report


def _write_outputs(
    settings: RunSettings, base: BaseModel, heads: MedusaHeads, report: dict, choices: list
) -> None:
    save_medusa_heads(heads, settings.output, base_model_name_or_path=base.name)
    (settings.output / HEADS_TREE_FILE).write_text(json.dumps(choices) + "\n")
    (settings.output / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    log.info("heads, tree and report written to %s", settings.output)
    if settings.export_own_projections is not None:
        full = export_with_own_projections(heads, base.lm_head)
        save_medusa_heads(full, settings.export_own_projections, base_model_name_or_path=base.name)
        log.info("heads with their own projections written to %s", settings.export_own_projections)
