"""`gorgon bench step-cost`: the measured time of one decoding step by tree size, for the tree search.

The head-training tree search (`gorgon train-heads --verify-cost`) trades tokens per step against what a step
of a given tree size costs on the machine that serves. This measures it with the engine's own step (drafting,
tree forward, lm_head, acceptance): for each size, one sequence decodes greedily with a spine tree of that many
nodes (the layout lookahead trees run in; a size no spine tree holds runs as a standard Medusa tree, the layout
of mc_sim_7b_63), and the median step time is reported with the peak memory of the steps (CUDA's peak
allocated, or on CPU the process's peak resident set: `memory_kind` says which). With --contexts every size is
measured after each context length, since attention reads the whole context. Points are measured in alternating
order over several rounds, so that the machine's drift spreads over all of them. The measuring is
step_cost_run.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gorgon.bench.arguments import add_device_arguments, add_model_arguments, positive_ints
from gorgon.core.errors import ConfigurationError

DEFAULT_NODES = (1, 2, 4, 6, 8, 12, 16, 24, 32, 40)
DEFAULT_STEPS = 24
DEFAULT_ROUNDS = 3
MIB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument(
        "--nodes",
        default=",".join(map(str, DEFAULT_NODES)),
        help="tree sizes (root included), comma-separated",
    )
    parser.add_argument(
        "--contexts",
        default=None,
        help="context lengths in tokens to measure every size at, comma-separated; the verify cost is the "
        "first one's (default: the first bench prompt as a chat turn)",
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="timed steps per size and round")
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds over all points (sizes × contexts)"
    )
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.set_defaults(medusa_choices=None)  # no tree flag: the run builds one tree per size


def _sizes(text: str) -> tuple[int, ...]:
    return positive_ints(text, "--nodes")


def _contexts(text: str | None) -> tuple[int, ...] | None:
    return positive_ints(text, "--contexts") if text is not None else None


def run(args: argparse.Namespace) -> int:
    sizes = _sizes(args.nodes)
    contexts = _contexts(args.contexts)
    if args.steps < 1 or args.rounds < 1:
        raise ConfigurationError("--steps and --rounds must be at least 1")
    from gorgon.bench.step_cost_run import measure_step_costs  # torch loads only here

    report = measure_step_costs(args, sizes, contexts)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
        return 0
    _print_table(report)
    return 0


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console  # keep `gorgon --help` light
    from rich.table import Table

    table = Table(
        title=f"step cost: {report['model']} on {report['device']} ({report['dtype']}), batch 1; "
        f"peak memory: {report['memory_kind']}"
    )
    for column in ("context tokens", "tree nodes", "tree", "median step ms", "× smallest", "peak MiB"):
        table.add_column(column, justify="right")
    smallest: dict[int, float] = {}
    for point in report["costs"]:
        base = smallest.setdefault(point["context_tokens"], point["ms"])
        table.add_row(
            str(point["context_tokens"]),
            str(point["nodes"]),
            point["tree"],
            f"{point['ms']:.1f}",
            f"{point['ms'] / base:.2f}",
            f"{point['peak_memory_bytes'] / MIB:.0f}",
        )
    console = Console()
    console.print(table)
    console.print(f"for the tree search: --verify-cost {report['verify_cost']}")
