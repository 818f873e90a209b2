"""`gorgon bench gpu-check` (`scripts/gpu-check.sh`): what a first run on a CUDA GPU must show, as one JSON
object on stdout (progress and logs on stderr). docs/deploy.md, "The GPU check", describes its use.

Its phases, each in processes of its own (gpu_check_run.py):

1. load (gpu_check_load.py): torch, CUDA, DeepSpeed and transformers versions; the seconds and peak memory of
   loading the model, its heads and the engine; the load test's prompts, sized with the model's tokenizer;
2. `gorgon bench engine --medusa-choices … --batch-sizes … --json`: Medusa's output identical to plain
   decoding's, tokens per step and tokens/s of every mode;
3. `gorgon bench step-cost --nodes … --contexts … --json`: step time and peak memory by tree size and context;
4. serving (gpu_check_serve.py): `gorgon up` with one worker under --concurrency streams of --prompt-tokens
   tokens at once, through `gorgon loadtest`: failed requests, worker restarts, out-of-memory errors.

`checks` names what must hold and `passed` is their conjunction; the exit status is 0 when it passed, 1 when
not. The defaults are the figures for a 7B model on one GPU; smaller ones run the same check on CPU with a
tiny model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gorgon.bench.arguments import add_device_arguments, add_model_arguments, positive_ints
from gorgon.bench.engine import DEFAULT_BATCH_SIZES, DEFAULT_MAX_NEW_TOKENS
from gorgon.bench.step_cost import DEFAULT_ROUNDS as DEFAULT_STEP_COST_ROUNDS
from gorgon.core.errors import ConfigurationError

if TYPE_CHECKING:
    from gorgon.bench.gpu_check_run import GpuCheckConfig

DEFAULT_MEDUSA_CHOICES = "mc_sim_7b_63"
DEFAULT_NODES = "1,4,16,64"
DEFAULT_CONTEXTS = "256,1900"
DEFAULT_CONCURRENCY = 48
DEFAULT_PROMPT_TOKENS = 1500
DEFAULT_BUDGET_S = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument("--medusa-choices", default=DEFAULT_MEDUSA_CHOICES, help="tree of the Medusa runs")
    bench = parser.add_argument_group("engine bench and step cost")
    bench.add_argument(
        "--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)), help="engine bench batch sizes"
    )
    bench.add_argument(
        "--engine-bench-quick",
        action="store_true",
        help="engine bench on its first prompts only (its --quick)",
    )
    bench.add_argument("--nodes", default=DEFAULT_NODES, help="step cost tree sizes (root included)")
    bench.add_argument("--contexts", default=DEFAULT_CONTEXTS, help="step cost context lengths in tokens")
    bench.add_argument(
        "--step-cost-rounds",
        type=int,
        default=DEFAULT_STEP_COST_ROUNDS,
        help="step cost rounds over all points",
    )
    serving = parser.add_argument_group("serving under load")
    serving.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="streams sent at once, one request each"
    )
    serving.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS, help="tokens per prompt")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="new tokens per sequence, in the engine bench and per request",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help="seconds the whole check may take (each phase is stopped past it)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for the prompts, logs and load test reports (default: a new temporary directory)",
    )


def run(args: argparse.Namespace) -> int:
    from gorgon.bench.gpu_check_run import run_gpu_check  # noqa: PLC0415 - keeps `gorgon --help` light

    summary = run_gpu_check(config_from_args(args))
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0 if summary["passed"] else 1


def config_from_args(args: argparse.Namespace) -> GpuCheckConfig:
    """The flags checked before any phase starts, so that a typo does not cost a model load."""
    from gorgon.bench.gpu_check_run import GpuCheckConfig  # noqa: PLC0415

    for flag in ("concurrency", "prompt_tokens", "max_tokens", "step_cost_rounds", "budget"):
        if getattr(args, flag) <= 0:
            raise ConfigurationError(
                f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}"
            )
    return GpuCheckConfig(
        model=args.model,
        heads=args.heads,
        device=args.device,
        dtype=args.dtype,
        deepspeed=not args.no_deepspeed,
        medusa_choices=args.medusa_choices,
        batch_sizes=positive_ints(args.batch_sizes, "--batch-sizes"),
        engine_bench_quick=args.engine_bench_quick,
        max_tokens=args.max_tokens,
        nodes=positive_ints(args.nodes, "--nodes"),
        contexts=positive_ints(args.contexts, "--contexts"),
        step_cost_rounds=args.step_cost_rounds,
        concurrency=args.concurrency,
        prompt_tokens=args.prompt_tokens,
        budget_s=args.budget,
        out=args.out or Path(tempfile.mkdtemp(prefix="gorgon-gpu-check-")),
    )
