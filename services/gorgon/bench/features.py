"""`gorgon bench features`: what each request feature costs per token, with speculation off and on, side by side
in one process.

The rows decode the same bench prompts greedily: a baseline, then logprobs=5, presence and frequency penalties,
repetition_penalty, logit_bias on ten tokens, response_format json_object and json_schema (whose prompts ask for
JSON), and n = batch (each prompt as `batch` identical requests, whose prompt the engine prefills once, against
the baseline's distinct prompts). Each row runs on an engine without heads (plain) and one with them (Medusa), at
every batch size, in rounds of alternating order; a row's ratio is its tokens/s over the baseline's of the same
mode and batch size. For Medusa rows the table says whether the greedy tokens equal plain decoding's with the same
parameters (they must) and how many tokens a step emitted.

The table goes to stdout as Markdown; with `--json`, exactly one JSON object instead: {"model", "device",
"dtype", "prompts", "max_new_tokens", "rounds", "features": {name: description}, "results": [{"feature", "mode",
"batch", "tokens_per_s", "ratio_to_baseline", "tokens_per_step", "tokens_per_sequence", "identical_to_plain"}]}.
`--out DIR` also writes that object to features.json and a bar chart to features.png. Progress and logs go to
stderr. The measuring is features_run.py's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gorgon.bench.arguments import add_device_arguments, add_model_arguments, positive_ints
from gorgon.bench.prompts import BENCH_PROMPTS
from gorgon.core.errors import ConfigurationError

if TYPE_CHECKING:
    from gorgon.bench.features_run import FeatureResult, FeaturesReport

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = 8
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_BATCH_SIZES = (1, 4)
DEFAULT_ROUNDS = 2
JSON_FILE = "features.json"
CHART_FILE = "features.png"
MISSING = "–"
CHART_DPI = 110


@dataclass(frozen=True, slots=True)
class FeaturesConfig:
    """What one run measures, checked before the model loads."""

    prompts: tuple[str, ...]
    max_new_tokens: int
    batch_sizes: tuple[int, ...]
    rounds: int
    out: Path | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument(
        "--medusa-choices",
        default=None,
        help="tree name (see gorgon.engine.tree.TREES; default: the engine's)",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=DEFAULT_PROMPTS,
        help=f"how many of the {len(BENCH_PROMPTS)} bench prompts, from the first",
    )
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument(
        "--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)), help="comma-separated"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help="runs of every row, in alternating order; tokens/s is their median",
    )
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--out", type=Path, default=None, help=f"directory for {JSON_FILE} and {CHART_FILE}")


def config_from_args(args: argparse.Namespace) -> FeaturesConfig:
    """The flags checked up front, so that a typo does not cost a model load."""
    if not 1 <= args.prompts <= len(BENCH_PROMPTS):
        raise ConfigurationError(f"--prompts must lie in [1, {len(BENCH_PROMPTS)}], got {args.prompts}")
    if args.max_new_tokens < 1:
        raise ConfigurationError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.rounds < 1:
        raise ConfigurationError(f"--rounds must be at least 1, got {args.rounds}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ConfigurationError(f"--out {args.out} exists and is not a directory")
    return FeaturesConfig(
        prompts=BENCH_PROMPTS[: args.prompts],
        max_new_tokens=args.max_new_tokens,
        batch_sizes=positive_ints(args.batch_sizes, "--batch-sizes"),
        rounds=args.rounds,
        out=args.out,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from gorgon.bench.features_run import run_features  # noqa: PLC0415 - torch and the engine load only here

    report = run_features(
        args,
        prompts=config.prompts,
        max_new_tokens=config.max_new_tokens,
        batch_sizes=config.batch_sizes,
        rounds=config.rounds,
    )
    if config.out is not None:
        for path in write_outputs(report, config.out):
            log.info("wrote %s", path)
    sys.stdout.write(json.dumps(asdict(report)) + "\n" if args.json else markdown_table(report))
    return 0


def markdown_table(report: FeaturesReport) -> str:
    """A line saying what was measured, then one table row per feature and batch size, plain and Medusa side by
    side, ending in a newline."""
    lines = [
        f"{report.model} on {report.device} ({report.dtype}), greedy, {report.prompts} prompts, up to "
        f"{report.max_new_tokens} new tokens each, median of {report.rounds} round(s). The JSON rows' prompts ask "
        "for JSON; n = batch decodes each prompt as `batch` identical requests, against the baseline's distinct "
        "prompts. Ratios are to the baseline of the same mode and batch size.",
        "",
        "| feature | batch | plain tok/s | plain × baseline | Medusa tok/s | Medusa × baseline "
        "| Medusa tokens/step | tokens/sequence | identical to plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_key = {(result.feature, result.mode, result.batch): result for result in report.results}
    tokens_per_sequence: dict[tuple[str, int], float] = {}  # the first mode's (plain's, when measured)
    for result in report.results:
        tokens_per_sequence.setdefault((result.feature, result.batch), result.tokens_per_sequence)
    for (feature, batch), sequence in sorted(tokens_per_sequence.items(), key=lambda item: item[0][1]):
        plain, medusa = by_key.get((feature, "plain", batch)), by_key.get((feature, "medusa", batch))
        cells = [
            report.features.get(feature, feature),
            str(batch),
            *_rate_cells(plain),
            *_rate_cells(medusa),
            f"{medusa.tokens_per_step:.2f}" if medusa else MISSING,
            f"{sequence:.1f}",
            _yes_no(medusa.identical_to_plain if medusa else None),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _rate_cells(result: FeatureResult | None) -> tuple[str, str]:
    """tokens/s and the ratio to the baseline, as the table shows them."""
    if result is None:
        return MISSING, MISSING
    ratio = MISSING if result.ratio_to_baseline is None else f"{result.ratio_to_baseline:.2f}×"
    return f"{result.tokens_per_s:.1f}", ratio


def _yes_no(value: bool | None) -> str:
    return MISSING if value is None else ("yes" if value else "**no**")


def write_outputs(report: FeaturesReport, out: Path) -> list[Path]:
    """features.json (what --json prints) and features.png in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / JSON_FILE
    json_path.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return [json_path, write_chart(report, out / CHART_FILE)]


def write_chart(report: FeaturesReport, path: Path) -> Path:
    """One panel per batch size: each feature's tokens/s as a bar per mode, labelled with its ratio to the
    baseline."""
    import matplotlib  # noqa: PLC0415 - keep `gorgon --help` light

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    batches = sorted({result.batch for result in report.results})
    features = list(report.features)
    figure, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        _batch_panel(ax, report.results, features, batch)
    figure.suptitle(f"{report.model} on {report.device} ({report.dtype}): tokens/s by request feature")
    figure.tight_layout()
    figure.savefig(path, dpi=CHART_DPI)
    plt.close(figure)
    return path


def _batch_panel(ax: Any, results: list[FeatureResult], features: list[str], batch: int) -> None:
    """Bars of one batch size: plain and Medusa side by side for every feature measured at it."""
    shown = [name for name in features if any(r.feature == name and r.batch == batch for r in results)]
    width = 0.4
    for offset, mode in ((-width / 2, "plain"), (width / 2, "medusa")):
        by_feature = {r.feature: r for r in results if r.mode == mode and r.batch == batch}
        positions = [index + offset for index, name in enumerate(shown) if name in by_feature]
        measured = [by_feature[name] for name in shown if name in by_feature]
        bars = ax.bar(positions, [r.tokens_per_s for r in measured], width, label=mode)
        labels = [MISSING if r.ratio_to_baseline is None else f"{r.ratio_to_baseline:.2f}×" for r in measured]
        ax.bar_label(bars, labels, fontsize="x-small")
    ax.set_xticks(range(len(shown)), shown, rotation=30, ha="right")
    ax.set(title=f"batch {batch}", ylabel="tokens/s")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
