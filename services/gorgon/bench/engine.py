"""`gorgon bench engine`: HF generate vs the engine's plain path vs its Medusa path, side by side in one process.

Greedy decoding on a fixed prompt set. With `--json`, exactly one JSON object goes to stdout:
{"model", "device", "dtype", "results": [{"mode", "batch", "tokens_per_s", "tokens_per_step",
"identical_to_plain", "shape_steps"}]} (`shape_steps`: the engine's steps per speculation shape, which shows what
the selector ran; empty for HF generate). Progress and logs go to stderr. The measuring is engine_run.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from gorgon.bench.arguments import add_device_arguments, add_model_arguments, positive_ints
from gorgon.bench.prompts import BENCH_PROMPTS
from gorgon.core.errors import ConfigurationError

if TYPE_CHECKING:
    from gorgon.bench.engine_run import EngineReport

DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_SIZES = (1, 4, 16)
QUICK_MAX_NEW_TOKENS = 32
QUICK_BATCH_SIZES = (1, 4)
QUICK_PROMPTS = 4  # the first prompts of the set
DEFAULT_ROUNDS = 1
TABLE_WIDTH = 132  # columns of the printed table at least, also when stdout is not a terminal


def _batch_sizes(text: str) -> tuple[int, ...]:
    return positive_ints(text, "--batch-sizes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=None, help=f"default {DEFAULT_MAX_NEW_TOKENS}")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, default 1,4,16")
    add_device_arguments(parser)
    parser.add_argument("--medusa-choices", default=None, help="tree name (see gorgon.engine.tree.TREES)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"batch 1,4, the first {QUICK_PROMPTS} prompts, 32 new tokens: under two minutes",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help="runs of every mode per batch size, in alternating order; tokens/s is their median",
    )
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise ConfigurationError(f"--rounds must be at least 1, got {args.rounds}")
    quick = args.quick
    max_new_tokens = args.max_new_tokens or (QUICK_MAX_NEW_TOKENS if quick else DEFAULT_MAX_NEW_TOKENS)
    if args.batch_sizes:
        batch_sizes = _batch_sizes(args.batch_sizes)
    else:
        batch_sizes = QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES
    from gorgon.bench.engine_run import run_benchmark  # torch and the engine load only here

    prompts = BENCH_PROMPTS[:QUICK_PROMPTS] if quick else BENCH_PROMPTS
    report = run_benchmark(args, max_new_tokens=max_new_tokens, batch_sizes=batch_sizes, prompts=prompts)
    if args.json:
        sys.stdout.write(json.dumps(asdict(report)) + "\n")
    else:
        _print_table(report)
    return 0


def _print_table(report: EngineReport) -> None:
    from rich.console import Console  # keep `gorgon --help` light
    from rich.table import Table

    table = Table(title=f"{report.model} on {report.device} ({report.dtype})")
    for column in (
        "mode",
        "batch",
        "tokens/s",
        "tokens/step",
        "identical to plain",
        "× plain",
        "steps by shape",
    ):
        table.add_column(column, justify="right")
    plain_rate = {r.batch: r.tokens_per_s for r in report.results if r.mode == "plain"}
    for result in report.results:
        ratio = (
            result.tokens_per_s / plain_rate[result.batch] if plain_rate.get(result.batch) else float("nan")
        )
        identical = "" if result.identical_to_plain is None else str(result.identical_to_plain)
        table.add_row(
            result.mode,
            str(result.batch),
            f"{result.tokens_per_s:.1f}",
            f"{result.tokens_per_step:.2f}",
            identical,
            f"{ratio:.2f}",
            shape_mix(result.shape_steps),
        )
    console = Console()
    console.width = max(console.width, TABLE_WIDTH)
    console.print(table)


def shape_mix(shape_steps: dict[str, int]) -> str:
    """{'chain_4': 93, 'plain': 7} -> 'chain_4 93% · plain 7%' (most used first)."""
    total = sum(shape_steps.values())
    ranked = sorted(shape_steps.items(), key=lambda item: -item[1])
    return (
        " · ".join(f"{name} {100 * steps / total:.0f}%" for name, steps in ranked if steps) if total else ""
    )
