"""`gorgon loadtest`: drive the OpenAI endpoints with streamed load and write summary.json, requests.csv and
PNG plots into --out."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gorgon.core.errors import ConfigurationError
from gorgon_loadtest.plan import Bounds, LoadTestPlan, RequestSettings, plan_levels
from gorgon_loadtest.prompts import DEFAULT_PROMPT_SET, load_prompts
from gorgon_loadtest.record import Mode
from gorgon_loadtest.target import Endpoint, Target, parse_target

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 1
DEFAULT_REQUESTS = 100
DEFAULT_DURATION_S = 300.0
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_TOKENS = 64
DEFAULT_TEMPERATURE = 0.0
DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_SERVER_NAME = "gorgon"
DEFAULT_BASELINE_NAME = "baseline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="base URL of the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--out", required=True, type=Path, help="directory for summary.json, CSV and plots")
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="closed loop: requests kept in flight"
    )
    load.add_argument("--rate", type=float, help="open loop instead: Poisson arrivals at R requests/s")
    load.add_argument("--sweep", help="closed loop at each concurrency of a list, e.g. 1,2,4,8,16,32")
    load.add_argument(
        "--compare-speculative", action="store_true", help="run each level with and without speculation"
    )
    load.add_argument("--speculative", action="store_true", help="ask for speculative decoding (one mode)")
    load.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests per level (bound)")
    load.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds per level (bound)")
    load.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds allowed per request")
    load.add_argument(
        "--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT, help="open loop: drop arrivals past this"
    )
    load.add_argument("--warmup", type=int, default=0, help="unrecorded requests sent first, per mode")
    load.add_argument("--seed", type=int, default=0, help="seed of the open loop's arrival times")
    body = parser.add_argument_group("requests")
    body.add_argument("--endpoint", choices=[e.value for e in Endpoint], default=Endpoint.COMPLETIONS.value)
    body.add_argument("--prompts", default=DEFAULT_PROMPT_SET, help="prompt set name or JSONL path")
    body.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    body.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    body.add_argument("--model", help="the `model` field of each request (omitted when not given)")
    body.add_argument(
        "--no-usage", action="store_true", help="do not ask for usage (count tokens as streamed chunks)"
    )
    baseline = parser.add_argument_group("baseline server (same load, interleaved level by level)")
    baseline.add_argument("--baseline-url", help="another OpenAI-compatible server to compare with")
    baseline.add_argument("--baseline-name", default=DEFAULT_BASELINE_NAME, help="its name in the reports")
    baseline.add_argument(
        "--name", default=DEFAULT_SERVER_NAME, help="the --url server's name (with a baseline)"
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a target other than this machine (loopback)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    # Deferred: httpx and matplotlib stay out of `gorgon --help`.
    from gorgon_loadtest.suite import execute

    plan = build_plan(args)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = asyncio.run(execute(plan))
    print_runs(result.summary["runs"])
    for path in result.files:
        print(f"wrote {path}")
    if result.summary["completed"] == 0:
        log.error("every request failed: %s", result.summary["error_types"])
        return 1
    return 0


def build_plan(args: argparse.Namespace) -> LoadTestPlan:
    """Validate the arguments into a LoadTestPlan (raises ConfigurationError with the flag at fault)."""
    _check_positive(args)
    concurrencies = parse_sweep(args.sweep) if args.sweep else [args.concurrency]
    if args.rate is not None and args.sweep:
        raise ConfigurationError("--sweep lists concurrencies (closed loop); it cannot go with --rate")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigurationError(f"--out {args.out} exists and is not a directory", param="out")
    if args.compare_speculative and args.speculative:
        raise ConfigurationError("--speculative picks one mode; --compare-speculative runs both: give one")
    single_mode = Mode.SPECULATIVE if args.speculative else Mode.STANDARD
    modes = list(Mode) if args.compare_speculative else [single_mode]
    targets = _targets(args)
    baseline = targets[1].name if len(targets) > 1 else None
    return LoadTestPlan(
        targets=targets,
        levels=plan_levels(
            concurrencies=concurrencies,
            rate=args.rate,
            modes=modes,
            baseline=baseline,
            server=targets[0].name,
        ),
        prompts=load_prompts(args.prompts),
        settings=RequestSettings(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            model=args.model,
            include_usage=not args.no_usage,
        ),
        bounds=Bounds(
            requests=args.requests,
            duration_s=args.duration,
            timeout_s=args.timeout,
            max_in_flight=args.max_in_flight,
        ),
        out_dir=args.out,
        warmup_requests=args.warmup,
        seed=args.seed,
        show_progress=not args.no_progress,
        prompt_set=args.prompts,
    )


def _targets(args: argparse.Namespace) -> tuple[Target, ...]:
    """The server under test, then the baseline if any; names appear in reports only with a baseline."""
    endpoint = Endpoint(args.endpoint)
    if args.baseline_url is None:
        return (parse_target(args.url, endpoint, allow_remote=args.allow_remote),)
    if not args.name or not args.baseline_name or args.name == args.baseline_name:
        raise ConfigurationError("--name and --baseline-name must be two different, non-empty names")
    return (
        parse_target(args.url, endpoint, allow_remote=args.allow_remote, name=args.name),
        parse_target(args.baseline_url, endpoint, allow_remote=args.allow_remote, name=args.baseline_name),
    )


def parse_sweep(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: positive concurrencies, in the order given, without repeats."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigurationError(f"--sweep {text!r}: expected integers like 1,2,4,8", param="sweep") from exc
    if not levels or min(levels) < 1:
        raise ConfigurationError(f"--sweep {text!r}: expected positive integers like 1,2,4,8", param="sweep")
    return list(dict.fromkeys(levels))


def _check_positive(args: argparse.Namespace) -> None:
    positive = {
        "--concurrency": args.concurrency,
        "--requests": args.requests,
        "--duration": args.duration,
        "--timeout": args.timeout,
        "--max-tokens": args.max_tokens,
        "--max-in-flight": args.max_in_flight,
    }
    if args.rate is not None:
        positive["--rate"] = args.rate
    for flag, value in positive.items():
        if value <= 0:
            raise ConfigurationError(f"{flag} must be positive, got {value:g}")
    if args.warmup < 0:
        raise ConfigurationError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.temperature < 0:
        raise ConfigurationError(f"--temperature must be 0 or more, got {args.temperature:g}")


def print_runs(runs: Sequence[dict[str, Any]]) -> None:
    """One line per run on stdout: the command's result."""
    width = max(len("run"), *(len(row["label"]) for row in runs)) + 2
    header = f"{'run':<{width}}{'reqs':>6}{'errs':>6}{'ttft p50':>10}{'e2e p50':>10}{'e2e p99':>10}"
    print(header + f"{'tok/s':>10}{'req/s':>9}")
    for row in runs:
        print(
            f"{row['label']:<{width}}{row['requests']:>6}{row['errors']:>6}"
            f"{_seconds(row['ttft_p50_s']):>10}{_seconds(row['e2e_p50_s']):>10}{_seconds(row['e2e_p99_s']):>10}"
            f"{row['output_tokens_per_s']:>10.1f}{row['requests_per_s']:>9.2f}"
        )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"
