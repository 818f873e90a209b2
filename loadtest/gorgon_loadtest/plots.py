"""PNG reports: latency CDFs, throughput and p99 against concurrency, speculative against standard, and the
server under test against a baseline server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from gorgon_loadtest.record import Mode, RunResult
from gorgon_loadtest.stats import latency_samples

if TYPE_CHECKING:
    from matplotlib.typing import LegendLocType

LATENCY_CDF_FILE = "latency_cdf.png"
CONCURRENCY_SWEEP_FILE = "concurrency_sweep.png"
SPECULATIVE_FILE = "speculative_vs_standard.png"
SERVERS_FILE = "servers_side_by_side.png"
MODE_STYLE = {Mode.STANDARD: "-", Mode.SPECULATIVE: "--"}
CDF_PANELS = (("ttft", "time to first token"), ("itl", "inter-token latency"), ("e2e", "end-to-end latency"))
SIDE_BY_SIDE_PANELS = (
    ("output_tokens_per_s", "output tokens/s"),
    ("ttft_p50_s", "TTFT p50 (s)"),
    ("tpot_p50_s", "time per output token p50 (s)"),
    ("e2e_p99_s", "end-to-end p99 (s)"),
)
P99_LINES = (("ttft_p99_s", "o", ":", "TTFT p99"), ("e2e_p99_s", "s", "-", "end-to-end p99"))
DPI = 110


def write_plots(runs: Sequence[RunResult], summaries: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write every plot the runs allow; returns the files written. `summaries` matches `runs` one to one."""
    written = [_latency_cdfs(runs, out_dir / LATENCY_CDF_FILE)]
    if len({row["concurrency"] for row in summaries if row["concurrency"] is not None}) > 1:
        written.append(_concurrency_sweep(summaries, out_dir / CONCURRENCY_SWEEP_FILE))
    main_server = [row for row in summaries if row["server"] == summaries[0]["server"]]
    if {row["mode"] for row in main_server} == set(Mode):
        title = "speculative vs standard" + (
            f" ({main_server[0]['server']})" if main_server[0]["server"] else ""
        )
        written.append(_side_by_side(main_server, title, out_dir / SPECULATIVE_FILE))
    if len({row["server"] for row in summaries}) > 1:
        written.append(_side_by_side(summaries, "servers side by side", out_dir / SERVERS_FILE))
    return written


def _latency_cdfs(runs: Sequence[RunResult], path: Path) -> Path:
    figure, axes = plt.subplots(1, len(CDF_PANELS), figsize=(15, 4.5))
    colors = plt.get_cmap("viridis")
    for number, run in enumerate(runs):
        samples = latency_samples(run.records)
        color = colors(number / max(1, len(runs) - 1))
        for ax, (kind, _) in zip(axes, CDF_PANELS, strict=True):
            _plot_cdf(ax, samples[kind], run.level.label, color, MODE_STYLE[run.level.mode])
    for ax, (_, title) in zip(axes, CDF_PANELS, strict=True):
        ax.set(title=title, xlabel="seconds (log scale)", ylabel="fraction of samples ≤ x", ylim=(0, 1.02))
        if ax.has_data():
            ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    _legend(axes[-1], loc="lower right")
    return _save(figure, path)


def _plot_cdf(ax: Axes, values: list[float], label: str, color: Any, style: str) -> None:
    if not values:
        return
    ordered = sorted(values)
    fractions = [(rank + 1) / len(ordered) for rank in range(len(ordered))]
    ax.step(ordered, fractions, where="post", label=label, color=color, linestyle=style)


def _concurrency_sweep(summaries: Sequence[dict[str, Any]], path: Path) -> Path:
    figure, (throughput_ax, latency_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    closed_loop = [row for row in summaries if row["concurrency"] is not None]
    for color_index, variant in enumerate(_variants(closed_loop)):
        rows = sorted(
            (row for row in closed_loop if row["variant"] == variant), key=lambda row: row["concurrency"]
        )
        levels = [row["concurrency"] for row in rows]
        color = f"C{color_index}"
        throughput = [row["output_tokens_per_s"] for row in rows]
        throughput_ax.plot(levels, throughput, "o-", color=color, label=variant)
        for metric, marker, style, name in P99_LINES:
            values = [row[metric] for row in rows]
            latency_ax.plot(
                levels, values, marker=marker, linestyle=style, color=color, label=f"{variant} {name}"
            )
    throughput_ax.set(title="output tokens/s", xlabel="concurrency", ylabel="tokens/s")
    latency_ax.set(title="p99 latency", xlabel="concurrency", ylabel="seconds")
    ticks = sorted({row["concurrency"] for row in closed_loop})
    for ax in (throughput_ax, latency_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(level) for level in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        _legend(ax)
    return _save(figure, path)


def _side_by_side(summaries: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """Grouped bars: one group per load level, one bar per variant (server and mode)."""
    levels = list(dict.fromkeys(_level_name(row) for row in summaries))
    variants = _variants(summaries)
    width = 0.8 / len(variants)
    figure, axes = plt.subplots(1, len(SIDE_BY_SIDE_PANELS), figsize=(4 * len(SIDE_BY_SIDE_PANELS), 4.5))
    for ax, (metric, panel_title) in zip(axes, SIDE_BY_SIDE_PANELS, strict=True):
        for number, variant in enumerate(variants):
            by_level = {_level_name(row): row[metric] for row in summaries if row["variant"] == variant}
            heights = [by_level.get(level) or 0.0 for level in levels]
            offset = (number - (len(variants) - 1) / 2) * width
            positions = [index + offset for index in range(len(levels))]
            ax.bar(positions, heights, width, label=variant, color=f"C{number}")
        ax.set_xticks(range(len(levels)), levels)
        ax.set(title=panel_title)
        ax.grid(axis="y", alpha=0.3)
    _legend(axes[0])
    figure.suptitle(title)
    return _save(figure, path)


def _variants(summaries: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(row["variant"] for row in summaries))


def _legend(ax: Axes, loc: LegendLocType = "best") -> None:
    """A legend when something was drawn; else say so (every request of the runs failed)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc=loc)
    else:
        ax.text(0.5, 0.5, "no successful requests", ha="center", va="center", transform=ax.transAxes)


def _level_name(row: dict[str, Any]) -> str:
    return f"c={row['concurrency']}" if row["rate"] is None else f"{row['rate']:g} req/s"


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
