"""Choosing the speculation shape per step (tree → chain → plain) from measured cost and acceptance.

A tree step verifies more drafted tokens but costs more per forward, and the extra cost grows with the batch.
The selector keeps, per shape, the mean tokens each row gains per step (acceptance, measured on speculative
rows) and, per shape and batch-size bucket, the mean step time; it picks the shape with the most tokens per
second. Shapes it has not measured at a bucket are tried first (unless a smaller bucket's measurements predict
a loss: see `predicted_to_lose`), and every shape is re-measured now and then, so
a shape that became worthwhile (trained heads, smaller batch) gets picked again.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gorgon.engine.tree import TreeBuffers

ACCEPTANCE_WINDOW = 64  # speculative steps per shape whose mean gain is the shape's acceptance
TIMING_WINDOW = 9  # step times per (shape, bucket) whose median is the shape's step time
MIN_SAMPLES = 3  # timed steps of a shape at a bucket before it is judged (after its warm-up step)
ACCEPTANCE_SAMPLES = 16  # speculative steps of a shape (any bucket) before its acceptance is judged
REEXPLORE_EVERY = 200  # steps at one bucket between re-measurements of the shapes not chosen
REMEASURE_WITHIN = (
    0.75  # shapes known to run below this fraction of the best shape's rate are not re-measured
)


def batch_bucket(batch_size: int) -> int:
    """Batch sizes grouped by powers of two: 1, 2, 4, 8, 16, ..."""
    return 1 << max(batch_size - 1, 0).bit_length()


@dataclass(slots=True)
class WindowMean:
    """Mean of the last ACCEPTANCE_WINDOW observations. Tokens gained vary from 1 to the tree's depth + 1 from
    one step to the next; an exponential mean with weight 0.2 (used before) swung by ±0.33 tokens, and whenever
    it dipped below the break-even point the selector went plain, which freezes the estimate until the next
    re-measurement: on 8 bench prompts at batch 1 it ran plain on 327 of 704 steps although the 4-deep chain
    gained 1.61 tokens per step at 1.12 plain steps' cost (measured 2026-12-01, /tmp script)."""

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=ACCEPTANCE_WINDOW))
    samples: int = 0

    @property
    def value(self) -> float:
        return statistics.fmean(self.recent) if self.recent else 0.0

    def add(self, observation: float) -> None:
        self.recent.append(observation)
        self.samples += 1


@dataclass(slots=True)
class RunningMedian:
    """Median of the last TIMING_WINDOW observations: one step stalled by another process (a page fault, a
    busy core) must not make a shape look slow until its next re-measurement."""

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=TIMING_WINDOW))
    samples: int = 0

    @property
    def value(self) -> float:
        return statistics.median(self.recent) if self.recent else 0.0

    def add(self, observation: float) -> None:
        self.recent.append(observation)
        self.samples += 1


@dataclass(slots=True)
class ShapeSelector:
    """shapes[0] must be the plain one-node tree; the others are tried in the given order."""

    shapes: Sequence[TreeBuffers]
    step_seconds: dict[tuple[str, int], RunningMedian] = field(
        default_factory=lambda: defaultdict(RunningMedian)
    )
    tokens_per_row: dict[str, WindowMean] = field(default_factory=lambda: defaultdict(WindowMean))
    steps_at_bucket: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    warmed_up: set[tuple[str, int]] = field(default_factory=set)
    steps_by_shape: Counter[str] = field(default_factory=Counter)  # every recorded step, by shape name

    def __post_init__(self) -> None:
        if not self.shapes or self.shapes[0].num_nodes != 1:
            raise ValueError("the first shape must be plain decoding (a one-node tree)")

    @property
    def plain(self) -> TreeBuffers:
        return self.shapes[0]

    def choose(self, batch_size: int, *, speculative_rows: int) -> TreeBuffers:
        if speculative_rows == 0 or len(self.shapes) == 1:
            return self.plain
        bucket = batch_bucket(batch_size)
        step = self.steps_at_bucket[bucket]
        candidates = [shape for shape in self.shapes if not self.predicted_to_lose(shape, bucket)]
        for shape in candidates:
            if self.needs_samples(shape, bucket):
                return shape
        best = max(candidates, key=lambda shape: self.expected_rate(shape, bucket))
        if step > 0 and step % REEXPLORE_EVERY == 0:
            others = [
                shape
                for shape in self.shapes
                if shape is not best and self.worth_remeasuring(shape, best, bucket)
            ]
            if others:
                return others[(step // REEXPLORE_EVERY) % len(others)]
        return best

    def worth_remeasuring(self, shape: TreeBuffers, best: TreeBuffers, bucket: int) -> bool:
        """Re-measure a shape now and then unless it is known (measured or predicted) to be far slower than the
        best one here: at batch 16 one step of a 14-node tree verifies 224 rows and costs ~5 plain steps, which
        no change of load or heads turns into a win."""
        rate, best_rate = self.relative_rate(shape, bucket), self.relative_rate(best, bucket)
        if rate is None or best_rate is None:
            return bucket == 1
        return rate >= REMEASURE_WITHIN * best_rate

    def needs_samples(self, shape: TreeBuffers, bucket: int) -> bool:
        """Too few timed steps at this bucket, or (speculative shapes) too few steps to judge acceptance,
        which varies from step to step far more than step time does."""
        if not self.measured(shape, bucket):
            return True
        return shape.num_nodes > 1 and self.tokens_per_row[shape.name].samples < ACCEPTANCE_SAMPLES

    def measured(self, shape: TreeBuffers, bucket: int) -> bool:
        return self.step_seconds[(shape.name, bucket)].samples >= MIN_SAMPLES

    def predicted_to_lose(self, shape: TreeBuffers, bucket: int) -> bool:
        """Whether `shape`, not yet measured at this bucket, is predicted slower than plain here. Past batch 1 a
        shape with no measurement at a smaller bucket counts as slower: shapes are explored bottom-up, as the
        batch passes through the buckets (a worker that starts with 16 requests would otherwise try the 14-node
        tree at batch 16 first: 224 rows per step, ~0.58 s a step here, for its 16 acceptance samples)."""
        if self.measured(shape, bucket):
            return False
        rate = self.relative_rate(shape, bucket)
        return rate < 1.0 if rate is not None else bucket > 1

    def relative_rate(self, shape: TreeBuffers, bucket: int) -> float | None:
        """Tokens per second of `shape` over plain's at this bucket: measured here, else predicted from the
        largest smaller bucket where both were measured, else None. Verifying a tree costs rows: past a few rows
        the products are compute-bound, so its extra cost over a plain step grows in proportion to the batch
        while the plain step grows far less. The prediction scales the measured extra cost by that ratio (a
        pessimistic guess for the tree), so a shape that only just won at batch b is not explored at 4b, where
        one exploration costs several plain steps."""
        if shape.num_nodes == 1:
            return 1.0
        if self.measured(shape, bucket) and self.measured(self.plain, bucket):
            return self.expected_rate(shape, bucket) / self.expected_rate(self.plain, bucket)
        smaller = bucket // 2
        while smaller >= 1:
            if self.measured(shape, smaller) and self.measured(self.plain, smaller):
                extra = (
                    self.step_seconds[(shape.name, smaller)].value
                    / self.step_seconds[(self.plain.name, smaller)].value
                    - 1.0
                )
                return self.tokens_per_row[shape.name].value / (1.0 + max(extra, 0.0) * bucket / smaller)
            smaller //= 2
        return None

    def expected_rate(self, shape: TreeBuffers, bucket: int) -> float:
        """Tokens per row per second expected from `shape` at this batch bucket."""
        seconds = self.step_seconds[(shape.name, bucket)].value
        gained = 1.0 if shape.num_nodes == 1 else self.tokens_per_row[shape.name].value
        return gained / seconds if seconds > 0 else 0.0

    def record(
        self, shape: TreeBuffers, batch_size: int, seconds: float, speculative_tokens: Sequence[int]
    ) -> None:
        """One finished step: its duration and the tokens each speculative row gained. The first step of a
        shape at a bucket is not timed: new shapes warm up kernels and allocations."""
        bucket = batch_bucket(batch_size)
        self.steps_at_bucket[bucket] += 1
        self.steps_by_shape[shape.name] += 1
        key = (shape.name, bucket)
        if key in self.warmed_up:
            self.step_seconds[key].add(seconds)
        self.warmed_up.add(key)
        if shape.num_nodes > 1 and speculative_tokens:
            self.tokens_per_row[shape.name].add(sum(speculative_tokens) / len(speculative_tokens))
