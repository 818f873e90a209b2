"""What `gorgon bench step-cost` measures (step_cost.py holds its flags and prints the report): the engine's own
step with trees of each size, timed one sequence at a time at each context length, with the peak memory of the
timed steps."""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from tqdm import tqdm

from gorgon.bench.engine_setup import settings_from_args, untrained_heads
from gorgon.bench.prompts import BENCH_PROMPTS
from gorgon.bench.step_cost_memory import PeakMemory
from gorgon.core.errors import ConfigurationError
from gorgon.engine.batch import cache_capacity
from gorgon.engine.decode import prefill, speculative_step
from gorgon.engine.drafting.checkpoint import load_heads_for
from gorgon.engine.drafting.heads import DRAFT_TOPK
from gorgon.engine.forward import SMALL_STEP_ROWS
from gorgon.engine.interface import ChatMessage
from gorgon.engine.kv import RowKVCache
from gorgon.engine.loader import load_model_and_tokenizer
from gorgon.engine.medusa_engine import MedusaEngine
from gorgon.engine.sampling import RowSampling
from gorgon.engine.tree import TreeBuffers, build_tree_buffers, chain

WARMUP_STEPS = 2

Point = tuple[int, int]  # (context tokens, tree nodes)


@dataclass(frozen=True, slots=True)
class StepTiming:
    """The timed steps of one sequence: their durations and the peak memory while they ran (with warm-up)."""

    seconds: list[float]
    peak_bytes: int


def spine_capacity(num_heads: int) -> int:
    """The most nodes a spine tree over `num_heads` heads holds: the root and every rank of every head."""
    return num_heads * DRAFT_TOPK + 1


def spine_tree_of(nodes: int, num_heads: int) -> TreeBuffers:
    """A lookahead tree of `nodes` nodes (root included): the top-1 chain over the heads, then leaves of rank
    1, 2, ... at depths 1..num_heads in turn. Its step costs what any spine tree of that size costs."""
    if nodes == 1:
        return build_tree_buffers((), name="plain")
    most = spine_capacity(num_heads)
    if nodes > most:
        raise ConfigurationError(f"--nodes: at most {most} nodes with {num_heads} heads")
    choices = list(chain(min(nodes - 1, num_heads)))
    rank = 1
    while len(choices) < nodes - 1:
        for depth in range(num_heads):
            if len(choices) < nodes - 1:
                choices.append((0,) * depth + (rank,))
        rank += 1
    return build_tree_buffers(choices, name=f"spine_{nodes}", lookahead=True)


def ranked_tree_of(nodes: int, num_heads: int) -> TreeBuffers:
    """A standard Medusa tree of `nodes` nodes (root included), in the layout mc_sim_7b_63 runs in: rank paths
    by their sum of ranks, then depth, so every path's parent comes before it."""
    choices = list(islice(_paths_by_rank_sum(num_heads), nodes - 1))
    if len(choices) < nodes - 1:
        raise ConfigurationError(f"--nodes: at most {len(choices) + 1} nodes with {num_heads} heads")
    return build_tree_buffers(choices, name=f"ranked_{nodes}")


def tree_of_size(nodes: int, num_heads: int, *, recurrent: bool) -> TreeBuffers:
    """The tree a size is timed with: a spine tree while one holds `nodes`, else a ranked tree; recurrent heads
    draft along their own best path only, so for them a spine tree or nothing."""
    if recurrent or nodes <= spine_capacity(num_heads):
        return spine_tree_of(nodes, num_heads)
    return ranked_tree_of(nodes, num_heads)


def _paths_by_rank_sum(num_heads: int) -> Iterator[tuple[int, ...]]:
    for total in range(num_heads * (DRAFT_TOPK - 1) + 1):
        for depth in range(1, num_heads + 1):
            yield from _rank_paths(total, depth)


def _rank_paths(total: int, depth: int) -> Iterator[tuple[int, ...]]:
    """Paths of `depth` ranks, each below DRAFT_TOPK, summing to `total`, in lexicographic order."""
    if depth == 1:
        if total < DRAFT_TOPK:
            yield (total,)
        return
    for first in range(min(total, DRAFT_TOPK - 1) + 1):
        for rest in _rank_paths(total - first, depth - 1):
            yield (first, *rest)


def context_prompt(engine: MedusaEngine, tokens: int) -> list[int]:
    """A context of exactly `tokens` tokens: the bench prompts' text, repeated as often as it takes."""
    text_ids = engine.encode("\n".join(BENCH_PROMPTS))
    return (text_ids * -(-tokens // len(text_ids)))[:tokens]


def _step_timing(
    engine: MedusaEngine, prompt: list[int], tree: TreeBuffers, steps: int, memory: PeakMemory
) -> StepTiming:
    """Greedy steps of one sequence with `tree` after `prompt`; the durations of all but the first
    WARMUP_STEPS, and the peak memory of all of them (the prefill's left out)."""
    layout = engine.layout
    cache = RowKVCache.allocate(
        num_layers=layout.num_layers,
        batch=1,
        kv_heads=layout.kv_heads,
        head_dim=layout.head_dim,
        capacity=cache_capacity(
            len(prompt) + (steps + WARMUP_STEPS + 1) * (tree.max_depth + 1),
            max(tree.num_nodes, SMALL_STEP_ROWS) + 1,
        ),
        dtype=layout.dtype,
        device=layout.device,
    )
    rows = [RowSampling()]
    outcome = prefill(engine.parts, cache, [prompt], rows)
    memory.reset()
    durations = []
    for _ in range(steps + WARMUP_STEPS):
        started = time.perf_counter()
        outcome = speculative_step(
            engine.parts,
            cache,
            outcome.next_tokens,
            outcome.draft_topk,
            tree,
            rows,
            engine.rule,
            want_drafts=tree.num_nodes > 1,
        )
        durations.append(time.perf_counter() - started)
    return StepTiming(durations[WARMUP_STEPS:], memory.peak_bytes())


def _prompts(engine: MedusaEngine, contexts: Sequence[int] | None) -> dict[int, list[int]]:
    """The prompt of every context length asked for; without any, the first bench prompt as a chat turn."""
    if contexts:
        return {tokens: context_prompt(engine, tokens) for tokens in contexts}
    prompt = engine.encode([ChatMessage("user", BENCH_PROMPTS[0])])
    return {len(prompt): prompt}


def _time_points(
    engine: MedusaEngine,
    prompts: dict[int, list[int]],
    trees: dict[int, TreeBuffers],
    args: argparse.Namespace,
    memory: PeakMemory,
) -> dict[Point, StepTiming]:
    """Every (context, size) point, in alternating order round by round, so that the machine's drift spreads
    over all of them; per point all rounds' step times and the highest peak."""
    points = [(context, size) for context in prompts for size in trees]
    seconds: dict[Point, list[float]] = defaultdict(list)
    peaks: dict[Point, int] = defaultdict(int)
    with tqdm(total=len(points) * args.rounds, desc="step cost", unit="point") as progress:
        for round_index in range(args.rounds):
            for point in points if round_index % 2 == 0 else reversed(points):
                context, size = point
                timing = _step_timing(engine, prompts[context], trees[size], args.steps, memory)
                seconds[point] += timing.seconds
                peaks[point] = max(peaks[point], timing.peak_bytes)
                progress.update()
    return {point: StepTiming(seconds[point], peaks[point]) for point in points}


@torch.inference_mode()
def measure_step_costs(
    args: argparse.Namespace, sizes: Sequence[int], contexts: Sequence[int] | None = None
) -> dict[str, Any]:
    """The median step time and peak memory of every tree size at every context length; the JSON report."""
    settings = settings_from_args(args)
    loaded = load_model_and_tokenizer(settings)
    heads = load_heads_for(loaded, settings) or untrained_heads(loaded)
    engine = MedusaEngine(loaded, heads, settings)
    trees = {
        size: tree_of_size(size, heads.num_heads, recurrent=heads.recurrent) for size in sorted(set(sizes))
    }
    prompts = _prompts(engine, contexts)
    memory = PeakMemory(loaded.device)
    timings = _time_points(engine, prompts, trees, args, memory)
    costs = [
        {
            "context_tokens": context,
            "nodes": size,
            "tree": trees[size].name,
            "ms": statistics.median(timing.seconds) * 1000.0,
            "peak_memory_bytes": timing.peak_bytes,
        }
        for (context, size), timing in timings.items()
    ]
    first_context = next(iter(prompts))
    return {
        "model": loaded.name,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "memory_kind": memory.kind,
        "costs": costs,
        "verify_cost": ",".join(
            f"{point['nodes']}:{point['ms']:.1f}"
            for point in costs
            if point["context_tokens"] == first_context
        ),
    }
