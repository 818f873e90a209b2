"""The GPU check's first phase, a process of its own (`python -m gorgon.bench.gpu_check_load`), so that the
memory it measures is its own and is free again for the phases after it.

It reports the versions of the stack (torch, CUDA, DeepSpeed, transformers), loads the model, its Medusa heads
and the engine as a worker does, timing each and measuring the peak memory of it all (CUDA's peak allocated, or
on CPU the process's peak resident set, bench/step_cost_memory.py), and writes the load test's prompts with the
model's own tokenizer, so that they are the asked number of tokens long for this model. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from gorgon import __version__
from gorgon.bench.arguments import add_device_arguments, add_model_arguments
from gorgon.bench.engine_setup import settings_from_args
from gorgon.bench.prompts import BENCH_PROMPTS
from gorgon.bench.step_cost_memory import PeakMemory
from gorgon.core.errors import GorgonError
from gorgon.core.logs import configure_logging
from gorgon.engine.config import EngineSettings
from gorgon.engine.drafting.checkpoint import load_heads_for
from gorgon.engine.loader import load_model_and_tokenizer, resolve_device
from gorgon.engine.medusa_engine import MedusaEngine

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument("--medusa-choices", default=None, help="tree name (see gorgon.engine.tree.TREES)")
    parser.add_argument(
        "--prompts-out", type=Path, required=True, help="JSONL file of the load test's prompts"
    )
    parser.add_argument("--prompt-tokens", type=int, required=True, help="tokens per prompt")
    parser.add_argument("--prompt-count", type=int, required=True, help="prompts to write")


def stack_versions() -> dict[str, Any]:
    """What the numbers were measured with; CUDA and the GPU are None without one."""
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "gorgon": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "deepspeed": _installed_version("deepspeed"),
        "transformers": _installed_version("transformers"),
    }


def _installed_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def measure_load(settings: EngineSettings) -> tuple[dict[str, Any], MedusaEngine]:
    """Load the model, its heads and the engine as a worker does: seconds of each, the peak memory of all."""
    memory = PeakMemory(resolve_device(settings.device))
    memory.reset()
    started = time.perf_counter()
    loaded = load_model_and_tokenizer(settings)
    model_done = time.perf_counter()
    heads = load_heads_for(loaded, settings)
    heads_done = time.perf_counter()
    engine = MedusaEngine(loaded, heads, settings)
    engine_done = time.perf_counter()
    report = {
        "model": loaded.name,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "deepspeed": loaded.uses_deepspeed,
        "heads": heads.num_heads if heads is not None else 0,
        "seconds": engine_done - started,
        "model_s": model_done - started,
        "heads_s": heads_done - model_done,
        "engine_s": engine_done - heads_done,
        "memory_kind": memory.kind,
        "peak_memory_bytes": memory.peak_bytes(),
    }
    return report, engine


def sized_prompts(tokenizer: PreTrainedTokenizerBase, tokens: int, count: int) -> list[str]:
    """`count` different prompts of about `tokens` tokens: the bench prompts' text, numbered and starting from a
    different prompt each time, its token ids repeated to `tokens` and decoded (encoding the text again may
    merge a token or two where the pieces meet)."""
    prompts = []
    for index in range(count):
        start = index % len(BENCH_PROMPTS)
        text = f"{index}. " + "\n".join(BENCH_PROMPTS[start:] + BENCH_PROMPTS[:start])
        ids = tokenizer.encode(text, add_special_tokens=False)
        repeated = (ids * -(-tokens // len(ids)))[:tokens]
        prompts.append(str(tokenizer.decode(repeated, skip_special_tokens=True)))
    return prompts


def write_prompt_set(prompts: Sequence[str], path: Path) -> None:
    """A prompt set as `gorgon loadtest --prompts` reads it: one {"prompt": ...} object a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts), encoding="utf-8")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The phase's report: versions, the load, and where the prompts went."""
    versions = stack_versions()
    with torch.inference_mode():
        load, engine = measure_load(settings_from_args(args))
    prompts = sized_prompts(engine.loaded.tokenizer, args.prompt_tokens, args.prompt_count)
    write_prompt_set(prompts, args.prompts_out)
    log.info("wrote %d prompts of %d tokens to %s", len(prompts), args.prompt_tokens, args.prompts_out)
    return {"versions": versions, "load": load, "prompts": str(args.prompts_out)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gorgon.bench.gpu_check_load", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(None)
    try:
        report = run(args)
    except GorgonError as exc:
        sys.stderr.write(f"gorgon: error: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
