"""`gorgon bench peers`: gorgon next to its peers, vLLM's CPU build and llama.cpp's server, on the same model,
the same prompts and the same client, one server at a time (docs/peers.md).

Each server in turn is started, warmed up, driven and stopped: gorgon through `gorgon up` with its defaults
(speculative and plain decoding, by the `use_speculative` request field), vLLM serving the engine's dequantized
HF copy of the model, llama.cpp serving the GGUF file itself, every one under the model name gorgon serves. A
peer runs from its own venv (`make peers`); one that is not installed is skipped with a one-line message.

The load is gorgon_loadtest's closed loop (its httpx client times each streamed chat completion chunk by chunk):
at each concurrency, --requests greedy requests of --max-tokens tokens over the benchmark prompts. The results
are one table, Markdown on stdout and in peers.md, the same figures and every level's summary in peers.json,
and peers.png (output tokens/s and TTFT p50 by concurrency), in --out. The starting and driving is
peers_run.py's (and peers_servers.py's), the writing peers_report.py's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from gorgon.bench.arguments import positive_ints
from gorgon.core.errors import ConfigurationError
from gorgon.engine.config import REPO_ROOT

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCIES = (1, 4, 16)
DEFAULT_REQUESTS = 16
DEFAULT_MAX_TOKENS = 128
DEFAULT_WARMUP = 1
DEFAULT_READY_TIMEOUT_S = 900.0
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
DEFAULT_LLAMACPP_PYTHON = REPO_ROOT / ".venv-llamacpp" / "bin" / "python"
DEFAULT_OUT = Path("bench-results") / "peers"


@dataclass(frozen=True)
class PeersConfig:
    """What one `gorgon bench peers` run measures, checked before any server starts."""

    concurrencies: tuple[int, ...]
    requests: int
    max_tokens: int
    warmup: int
    engine: str | None
    vllm_python: Path
    llamacpp_python: Path
    threads: int | None
    ready_timeout_s: float
    request_timeout_s: float
    out: Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency",
        default=",".join(map(str, DEFAULT_CONCURRENCIES)),
        help="comma-separated concurrencies, each a closed loop of that many streams",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help="requests per concurrency, over the bench prompts",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="output tokens per request"
    )
    parser.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help="unmeasured requests per server and mode first"
    )
    parser.add_argument(
        "--engine", choices=["medusa", "echo"], help="gorgon's worker engine (default: `gorgon up`'s)"
    )
    parser.add_argument(
        "--vllm-python", type=Path, default=DEFAULT_VLLM_PYTHON, help="Python of vLLM's venv (make venv-vllm)"
    )
    parser.add_argument(
        "--llamacpp-python",
        type=Path,
        default=DEFAULT_LLAMACPP_PYTHON,
        help="Python of llama-cpp-python's venv (make venv-llamacpp)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="compute threads of each peer (default: a gorgon model worker's under `gorgon up`, the cores "
        "less one left to the HTTP server and the client)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT_S,
        help="seconds a server may take to start",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, help="seconds per request"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="directory for peers.md, peers.json, peers.png and logs"
    )


def run(args: argparse.Namespace) -> int:
    from gorgon.bench.peers_report import markdown_table, write_reports  # noqa: PLC0415 - matplotlib
    from gorgon.bench.peers_run import run_peers  # noqa: PLC0415 - torch, httpx

    config = config_from_args(args)
    result = run_peers(config)
    for path in write_reports(result, config.out):
        log.info("wrote %s", path)
    sys.stdout.write(markdown_table(result) + "\n")
    return 0


def config_from_args(args: argparse.Namespace) -> PeersConfig:
    """The flags checked up front, so that a typo does not cost a server start."""
    for flag in ("requests", "max_tokens", "ready_timeout", "request_timeout"):
        if getattr(args, flag) <= 0:
            raise ConfigurationError(
                f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}"
            )
    if args.warmup < 0:
        raise ConfigurationError(f"--warmup must not be negative, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise ConfigurationError(f"--threads must be at least 1, got {args.threads}")
    return PeersConfig(
        concurrencies=tuple(sorted(set(positive_ints(args.concurrency, "--concurrency")))),
        requests=args.requests,
        max_tokens=args.max_tokens,
        warmup=args.warmup,
        engine=args.engine,
        vllm_python=args.vllm_python,
        llamacpp_python=args.llamacpp_python,
        threads=args.threads,
        ready_timeout_s=args.ready_timeout,
        request_timeout_s=args.request_timeout,
        out=args.out,
    )
