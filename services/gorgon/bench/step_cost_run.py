"""What `gorgon bench step-cost` measures (step_cost.py holds its flags and prints the report): the engine's own
step with spine trees of each size, timed one sequence at a time."""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from gorgon.bench.engine_setup import settings_from_args, untrained_heads
from gorgon.bench.prompts import BENCH_PROMPTS
from gorgon.core.errors import ConfigurationError
from gorgon.engine.batch import cache_capacity
from gorgon.engine.decode import prefill, speculative_step
from gorgon.engine.drafting.checkpoint import load_heads_for
from gorgon.engine.drafting.heads import DRAFT_TOPK
from gorgon.engine.interface import ChatMessage
from gorgon.engine.kv import RowKVCache
from gorgon.engine.loader import load_model_and_tokenizer
from gorgon.engine.medusa_engine import MedusaEngine
from gorgon.engine.sampling import RowSampling
from gorgon.engine.tree import TreeBuffers, build_tree_buffers, chain

WARMUP_STEPS = 2


def spine_tree_of(nodes: int, num_heads: int) -> TreeBuffers:
    """A lookahead tree of `nodes` nodes (root included): the top-1 chain over the heads, then leaves of rank
    1, 2, ... at depths 1..num_heads in turn. Its step costs what any spine tree of that size costs."""
    if nodes == 1:
        return build_tree_buffers((), name="plain")
    most = num_heads * DRAFT_TOPK + 1
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


def _step_seconds(engine: MedusaEngine, prompt: list[int], tree: TreeBuffers, steps: int) -> list[float]:
    """Greedy steps of one sequence with `tree`; the durations of all but the first WARMUP_STEPS."""
    layout = engine.layout
    cache = RowKVCache.allocate(
        num_layers=layout.num_layers,
        batch=1,
        kv_heads=layout.kv_heads,
        head_dim=layout.head_dim,
        capacity=cache_capacity(
            len(prompt) + (steps + WARMUP_STEPS + 1) * (tree.max_depth + 1), tree.num_nodes + 1
        ),
        dtype=layout.dtype,
        device=layout.device,
    )
    rows = [RowSampling()]
    outcome = prefill(engine.parts, cache, [prompt], rows)
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
    return durations[WARMUP_STEPS:]


@torch.inference_mode()
def measure_step_costs(args: argparse.Namespace, sizes: Sequence[int]) -> dict[str, Any]:
    """The median step time of every tree size, sizes alternating in order round by round; the JSON report."""
    settings = settings_from_args(args)
    loaded = load_model_and_tokenizer(settings)
    heads = load_heads_for(loaded, settings) or untrained_heads(loaded)
    engine = MedusaEngine(loaded, heads, settings)
    prompt = engine.encode([ChatMessage("user", BENCH_PROMPTS[0])])
    trees = {size: spine_tree_of(size, heads.num_heads) for size in sizes}
    seconds: dict[int, list[float]] = defaultdict(list)
    with tqdm(total=len(sizes) * args.rounds, desc="step cost", unit="size") as progress:
        for round_index in range(args.rounds):
            order = sizes if round_index % 2 == 0 else tuple(reversed(sizes))
            for size in order:
                seconds[size] += _step_seconds(engine, prompt, trees[size], args.steps)
                progress.update()
    costs = [{"nodes": size, "ms": statistics.median(seconds[size]) * 1000.0} for size in sorted(sizes)]
    return {
        "model": loaded.name,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "costs": costs,
        "verify_cost": ",".join(f"{point['nodes']}:{point['ms']:.1f}" for point in costs),
    }
