"""The speculation shapes an engine offers (plain, a chain, a tree) and choosing one per step from measured cost
and acceptance.

A tree step verifies more drafted tokens but costs more per forward, and the extra cost grows with the batch.
The selector keeps, per shape, the mean tokens each row gains per step (acceptance, measured on speculative
rows) and, per speculative shape and batch-size bucket, its cost in plain steps: the median ratio of its step
time to a plain step's, each ratio taken from two adjacent steps. It picks the shape with the most tokens per
plain step's time. Shapes it has not measured at a bucket are measured first, alternating with plain steps
(unless a smaller bucket's measurements predict a loss: see `predicted_to_lose`), and every shape's cost is
re-measured now and then, so a shape that became worthwhile (trained heads, smaller batch) gets picked again.

Costs are ratios of adjacent steps because a shared machine's speed drifts by tens of percent over minutes:
absolute step times measured minutes apart compare the drift, not the shapes, and kept a chain that cost more
than the tokens it gained.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gorgon.core.errors import GorgonError
from gorgon.engine.config import EngineSettings
from gorgon.engine.drafting.checkpoint import HEADS_TREE_FILE
from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.engine.drafting.source import heads_directory
from gorgon.engine.tree import TREES, TreeBuffers, build_tree_buffers, chain, is_spine_tree, spine_choices

log = logging.getLogger(__name__)

CHAIN_DEPTH = 3  # drafted tokens in the chain shape of Medusa-1 heads (fewer when fewer heads)

ACCEPTANCE_WINDOW = 64  # speculative steps per shape whose mean gain is the shape's acceptance
TIMING_WINDOW = (
    9  # step times per (shape, bucket) whose median is its step time (kept to inspect, not compared)
)
COST_WINDOW = 9  # cost ratios per (shape, bucket) whose median is the shape's cost in plain steps
COST_SAMPLES = 6  # cost ratios of a shape at a bucket before it is judged (its warm-up step is not timed)
REFRESH_SAMPLES = 4  # fresh cost ratios a re-measurement takes
ACCEPTANCE_SAMPLES = 16  # speculative steps of a shape (any bucket) before its acceptance is judged
REEXPLORE_EVERY = 200  # steps at one bucket between re-measurements
SPECULATION_MARGIN = 1.03  # a speculative shape must beat plain's rate by this factor to be chosen
RECHECK_WITHIN = 0.9  # plain chosen at batch 1: shapes at least this fraction of its rate are judged afresh
REMEASURE_WITHIN = (
    0.75  # shapes known to run below this fraction of the best shape's rate are not re-measured
)


def build_shapes(
    settings: EngineSettings, heads: MedusaHeads | None, device: torch.device
) -> list[TreeBuffers]:
    """plain first, then the chain and the configured tree (only those the heads can fill)."""
    shapes = [build_tree_buffers((), name="plain", device=device)]
    if heads is None:
        return shapes
    # Recurrent heads chain over all their heads: each continues the one before it, so deep drafts stay useful.
    depth = heads.num_heads if heads.recurrent else min(CHAIN_DEPTH, heads.num_heads)
    shapes.append(build_tree_buffers(chain(depth), name=f"chain_{depth}", device=device))
    tree = _configured_tree(settings, heads, device)
    if tree.num_nodes > 1 and tree.choices != shapes[-1].choices:
        shapes.append(tree)
    return shapes


def default_tree_name(device: torch.device) -> str:
    return "mc_sim_7b_63" if device.type == "cuda" else "cpu_12"


def _configured_tree(settings: EngineSettings, heads: MedusaHeads, device: torch.device) -> TreeBuffers:
    """The named tree; with `auto`, the tree shipped beside the heads (medusa_choices.json) or the device default.

    Recurrent heads draft along their own best path, so a tree is cut to the nodes that branch off it. A tree
    that only branches off its top-1 chain runs as a lookahead tree (decode.lookahead_step)."""
    directory = heads_directory(settings)
    shipped = directory / HEADS_TREE_FILE if directory is not None else None
    if settings.medusa_choices == "auto" and shipped is not None and shipped.is_file():
        name, choices = "heads_tree", [tuple(path) for path in json.loads(shipped.read_text())]
    else:
        name = default_tree_name(device) if settings.medusa_choices == "auto" else settings.medusa_choices
        if name not in TREES:
            raise GorgonError(
                f"unknown Medusa tree {name!r}; known: {', '.join(TREES)}",
                param="medusa_choices",
                code="configuration_error",
            )
        choices = list(TREES[name])
    usable = [path for path in choices if len(path) <= heads.num_heads]
    if heads.recurrent:
        spine = spine_choices(usable)
        if len(spine) < len(usable):
            log.info("tree %s: %d of %d nodes fit recurrent heads", name, len(spine), len(usable))
        usable = spine
    return build_tree_buffers(usable, name=name, device=device, lookahead=is_spine_tree(usable))


def batch_bucket(batch_size: int) -> int:
    """Batch sizes grouped by powers of two: 1, 2, 4, 8, 16, ..."""
    return 1 << max(batch_size - 1, 0).bit_length()


@dataclass(slots=True)
class WindowMean:
    """Mean of the last ACCEPTANCE_WINDOW observations. Tokens gained vary from 1 to the tree's depth + 1 from
    one step to the next; an exponential mean swings so far that it dips below the break-even point now and
    then, the selector goes plain, and a plain step measures no acceptance: the estimate stays low until the
    next re-measurement although the shape wins."""

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
class TimedStep:
    """A recorded step that was timed (not a shape's warm-up at its bucket)."""

    shape: str
    bucket: int
    seconds: float


@dataclass(slots=True)
class ShapeSelector:
    """shapes[0] must be the plain one-node tree; the others are tried in the given order."""

    shapes: Sequence[TreeBuffers]
    step_seconds: dict[tuple[str, int], RunningMedian] = field(
        default_factory=lambda: defaultdict(RunningMedian)
    )
    cost_in_plain_steps: dict[tuple[str, int], RunningMedian] = field(
        default_factory=lambda: defaultdict(lambda: RunningMedian(deque(maxlen=COST_WINDOW)))
    )
    tokens_per_row: dict[str, WindowMean] = field(default_factory=lambda: defaultdict(WindowMean))
    steps_at_bucket: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    warmed_up: set[tuple[str, int]] = field(default_factory=set)
    steps_by_shape: Counter[str] = field(default_factory=Counter)  # every recorded step, by shape name
    refreshing: Counter[tuple[str, int]] = field(default_factory=Counter)  # fresh cost ratios still wanted
    previous: TimedStep | None = None  # the last recorded step, if it was timed
    implied_chains: dict[str, list[TreeBuffers]] = field(init=False)  # by `_chains_on_spine`

    def __post_init__(self) -> None:
        if not self.shapes or self.shapes[0].num_nodes != 1:
            raise ValueError("the first shape must be plain decoding (a one-node tree)")
        self.implied_chains = {shape.name: _chains_on_spine(shape, self.shapes[1:]) for shape in self.shapes}

    @property
    def plain(self) -> TreeBuffers:
        return self.shapes[0]

    def choose(self, batch_size: int, *, speculative_rows: int) -> TreeBuffers:
        if speculative_rows == 0 or len(self.shapes) == 1:
            return self.plain
        bucket = batch_bucket(batch_size)
        candidates = [shape for shape in self.shapes[1:] if not self.predicted_to_lose(shape, bucket)]
        for shape in candidates:
            if self.needs_cost_samples(shape, bucket):
                return shape if self.previous_was_plain(bucket) else self.plain
            if self.needs_acceptance_samples(shape, bucket):
                return shape
        return self.best(candidates, bucket)

    def best(self, candidates: Sequence[TreeBuffers], bucket: int) -> TreeBuffers:
        """The measured shape with the most tokens per second; plain unless a shape beats it by the margin."""
        rates = {shape.name: self.relative_rate(shape, bucket) or 0.0 for shape in candidates}
        fastest = max(candidates, key=lambda shape: rates[shape.name], default=self.plain)
        if fastest is self.plain or rates[fastest.name] < SPECULATION_MARGIN:
            return self.plain
        return fastest

    def previous_was_plain(self, bucket: int) -> bool:
        previous = self.previous
        return previous is not None and previous.shape == self.plain.name and previous.bucket == bucket

    def needs_cost_samples(self, shape: TreeBuffers, bucket: int) -> bool:
        """Too few cost ratios at this bucket, or a re-measurement under way."""
        return not self.measured(shape, bucket) or self.refreshing[(shape.name, bucket)] > 0

    def needs_acceptance_samples(self, shape: TreeBuffers, bucket: int) -> bool:
        """Fewer than ACCEPTANCE_SAMPLES steps judge the shape's acceptance: at any bucket before it was first
        judged, and at batch 1 only after a re-measurement emptied its window (see `_start_remeasurement`)."""
        window = self.tokens_per_row[shape.name]
        return len(window.recent) < ACCEPTANCE_SAMPLES and (
            bucket == 1 or window.samples < ACCEPTANCE_SAMPLES
        )

    def measured(self, shape: TreeBuffers, bucket: int) -> bool:
        if shape.num_nodes == 1:
            return True
        return self.cost_in_plain_steps[(shape.name, bucket)].samples >= COST_SAMPLES

    def worth_remeasuring(self, shape: TreeBuffers, best: TreeBuffers, bucket: int) -> bool:
        """Re-measure a shape now and then unless it is known (measured or predicted) to be far slower than the
        best one here: at batch 16 one step of a 14-node tree verifies 224 rows and costs ~5 plain steps, which
        no change of load or heads turns into a win."""
        rate, best_rate = self.relative_rate(shape, bucket), self.relative_rate(best, bucket)
        if rate is None or best_rate is None:
            return bucket == 1
        return rate >= REMEASURE_WITHIN * best_rate

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
        largest smaller bucket where it was measured, else None. Verifying a tree costs rows: past a few rows
        the products are compute-bound, so its extra cost over a plain step grows in proportion to the batch
        while the plain step grows far less. The prediction scales the measured extra cost by that ratio (a
        pessimistic guess for the tree), so a shape that only just won at batch b is not explored at 4b, where
        one exploration costs several plain steps."""
        if shape.num_nodes == 1:
            return 1.0
        gained = self.tokens_per_row[shape.name].value
        if self.measured(shape, bucket):
            return gained / self.cost_in_plain_steps[(shape.name, bucket)].value
        smaller = bucket // 2
        while smaller >= 1:
            if self.measured(shape, smaller):
                extra = self.cost_in_plain_steps[(shape.name, smaller)].value - 1.0
                return gained / (1.0 + max(extra, 0.0) * bucket / smaller)
            smaller //= 2
        return None

    def close_to_plain(self, shape: TreeBuffers) -> bool:
        """Whether `shape` runs at batch 1 within RECHECK_WITHIN of plain's rate: close enough that its acceptance on
        other text could make it win. (A shape far behind, say a chain costing 2 plain steps for 1.6 tokens, is
        not run for ACCEPTANCE_SAMPLES steps at every re-measurement.)"""
        rate = self.relative_rate(shape, 1)
        return rate is not None and rate >= RECHECK_WITHIN

    def chains_verified_by(self, shape: TreeBuffers) -> list[TreeBuffers]:
        """The other chains whose every node `shape` verifies as a chain does (fixed per shape, see
        `_chains_on_spine`)."""
        return self.implied_chains[shape.name]

    def record(
        self, shape: TreeBuffers, batch_size: int, seconds: float, speculative_tokens: Sequence[int]
    ) -> None:
        """One finished step: its duration and the tokens each speculative row gained. The first step of a
        shape at a bucket is not timed: new shapes warm up kernels and allocations."""
        bucket = batch_bucket(batch_size)
        self.steps_at_bucket[bucket] += 1
        self.steps_by_shape[shape.name] += 1
        if shape.num_nodes > 1 and speculative_tokens:
            self.tokens_per_row[shape.name].add(sum(speculative_tokens) / len(speculative_tokens))
            for implied in self.chains_verified_by(shape):
                longest = implied.max_depth + 1
                gains = [min(tokens, longest) for tokens in speculative_tokens]
                self.tokens_per_row[implied.name].add(sum(gains) / len(gains))
        key = (shape.name, bucket)
        step = TimedStep(shape.name, bucket, seconds) if key in self.warmed_up else None
        self.warmed_up.add(key)
        if step is not None:
            self.step_seconds[key].add(seconds)
            self._add_cost_ratio(step)
        self.previous = step
        if self.steps_at_bucket[bucket] % REEXPLORE_EVERY == 0:
            self._start_remeasurement(bucket)

    def _add_cost_ratio(self, step: TimedStep) -> None:
        """A speculative step next to a plain one at the same bucket gives one ratio of their times."""
        previous, plain = self.previous, self.plain.name
        if (
            previous is None
            or previous.bucket != step.bucket
            or (previous.shape == plain) == (step.shape == plain)
        ):
            return
        speculative, plain_step = (step, previous) if previous.shape == plain else (previous, step)
        if plain_step.seconds <= 0:
            return
        key = (speculative.shape, step.bucket)
        self.cost_in_plain_steps[key].add(speculative.seconds / plain_step.seconds)
        if self.refreshing[key] > 0:
            self.refreshing[key] -= 1

    def _start_remeasurement(self, bucket: int) -> None:
        """Every REEXPLORE_EVERY steps at a bucket, the chosen shape (if speculative) and the shapes close to it
        take fresh cost ratios next to plain steps: a cost changes with the context and the batch's rows.

        When plain decoding is chosen at batch 1, the shapes close to it have their acceptance judged afresh too
        (ACCEPTANCE_SAMPLES steps on the text decoded now): acceptance varies with the text, and a shape that is
        not run keeps the estimate of the text it last ran on. Judged on a hard opening, a chain stayed off while
        easier text followed (docs/engine.md, "Scheduling and the shape selector").
        """
        measured = [shape for shape in self.shapes[1:] if self.measured(shape, bucket)]
        best = self.best(measured, bucket)
        for shape in measured:
            if shape is best or self.worth_remeasuring(shape, best, bucket):
                self.refreshing[(shape.name, bucket)] = REFRESH_SAMPLES
                if best is self.plain and bucket == 1 and self.close_to_plain(shape):
                    self.tokens_per_row[shape.name].recent.clear()


def _chains_on_spine(shape: TreeBuffers, speculative: Sequence[TreeBuffers]) -> list[TreeBuffers]:
    """The chains among `speculative` (other than `shape`) no deeper than the top-1 chain of `shape`, when `shape`
    is a lookahead tree or a longer chain: it verifies their every node exactly as they do, so a step of `shape`
    that emitted t tokens for a row is one in which a chain of depth d would have emitted min(t, d + 1), and it
    measures that chain's acceptance on the text decoded now. Without it a chain's estimate stays at the text it
    last ran on while the tree runs, judged on hard text long after the text became easy. A gathered branching
    tree may accept off its top-1 chain, so it stands for no chain."""
    if shape.num_nodes == 1 or not (shape.lookahead or shape.is_chain):
        return []
    spine_depth = shape.spine_nodes - 1
    return [
        other
        for other in speculative
        if other is not shape and other.is_chain and other.max_depth <= spine_depth
    ]
