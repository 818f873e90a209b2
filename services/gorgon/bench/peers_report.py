"""The results of `gorgon bench peers`: one row per server and mode, written as a Markdown table (peers.md), as
JSON with every concurrency's load test summary (peers.json), and as a PNG of output tokens/s and TTFT p50 by
concurrency (peers.png).

A row holds the output tokens/s at each concurrency (at 1: one stream's speed), and at the highest concurrency
the TTFT p50, the ITL p50 (the gap between chunks that carry text: a speculative chunk may carry several
tokens) and the TPOT p50 (time per output token after the first, which counts them); then the output tokens per
completed request (greedy decoding stops at EOS before --max-tokens on some prompts, and a GGUF model's
quantized weights may reach EOS elsewhere than their dequantized copy) and the failed requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from gorgon.bench.peers_run import PeersResult, VariantResult

TABLE_FILE = "peers.md"
JSON_FILE = "peers.json"
PLOT_FILE = "peers.png"
LATENCIES_MS = (
    ("ttft_p50_ms", "ttft_p50_s", "TTFT p50"),
    ("itl_p50_ms", "itl_p50_s", "ITL p50"),
    ("tpot_p50_ms", "tpot_p50_s", "TPOT p50"),
)
"""The latencies of a row: its key, the load test summary's key, the column title."""
MISSING = "–"
DPI = 110


def table_rows(result: PeersResult) -> list[dict[str, Any]]:
    """One row per server and mode, the figures by name (peers.json's `table`)."""
    return [_row(variant, result.concurrencies) for variant in result.variants]


def _row(variant: VariantResult, concurrencies: tuple[int, ...]) -> dict[str, Any]:
    by_concurrency = {level["concurrency"]: level for level in variant.levels}
    highest = by_concurrency.get(max(concurrencies), {})
    completed = sum(level["completed"] for level in variant.levels)
    row: dict[str, Any] = {
        "server": variant.label,
        "output_tokens_per_s": {
            str(c): by_concurrency[c]["output_tokens_per_s"] if c in by_concurrency else None
            for c in concurrencies
        },
        "latency_concurrency": max(concurrencies),
    }
    for key, summary_key, _ in LATENCIES_MS:
        row[key] = _milliseconds(highest.get(summary_key))
    row["tokens_per_request"] = (
        sum(level["output_tokens"] for level in variant.levels) / completed if completed else None
    )
    row["errors"] = sum(level["errors"] for level in variant.levels)
    return row


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def markdown_table(result: PeersResult) -> str:
    """The table, a line saying what was measured above it, a line per skipped server below it."""
    concurrencies = result.concurrencies
    highest = max(concurrencies)
    header = [f"output tok/s, c={c}" for c in concurrencies]
    header += [f"{title}, c={highest} (ms)" for _, _, title in LATENCIES_MS]
    header += ["tokens/request", "errors"]
    lines = [
        _settings_line(result.settings),
        "",
        "| server | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(header),
    ]
    for row in table_rows(result):
        cells = [_number(row["output_tokens_per_s"][str(c)]) for c in concurrencies]
        cells += [_number(row[key]) for key, _, _ in LATENCIES_MS]
        cells += [_number(row["tokens_per_request"]), str(row["errors"])]
        lines.append(f"| {row['server']} | " + " | ".join(cells) + " |")
    if result.skipped:
        lines.append("")
        lines += [f"- {name}: skipped, {reason}" for name, reason in result.skipped.items()]
    return "\n".join(lines)


def _settings_line(settings: dict[str, Any]) -> str:
    return (
        f"{settings['model']}, greedy, {settings['max_tokens']} output tokens at most, "
        f"{settings['requests_per_concurrency']} streaming chat completions per concurrency, one server at a "
        f"time, {settings['peer_threads']} compute thread(s) for each peer on {settings['cores']} core(s)."
    )


def _number(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def result_json(result: PeersResult) -> dict[str, Any]:
    """peers.json: the settings, the table's rows, each variant with its command line and every concurrency's
    summary, and the skipped servers with their reasons."""
    return {
        "settings": result.settings,
        "table": table_rows(result),
        "servers": [
            {
                "label": variant.label,
                "server": variant.server,
                "mode": variant.mode,
                "command": list(variant.command),
                "log": variant.log_path,
                "levels": variant.levels,
            }
            for variant in result.variants
        ],
        "skipped": result.skipped,
    }


def write_plot(result: PeersResult, path: Path) -> Path:
    """Output tokens/s and TTFT p50 against concurrency, one line per server and mode."""
    figure, (throughput_ax, ttft_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for number, variant in enumerate(result.variants):
        levels = sorted(variant.levels, key=lambda level: level["concurrency"])
        x = [level["concurrency"] for level in levels]
        style = {"marker": "o", "color": f"C{number}", "label": variant.label}
        throughput_ax.plot(x, [level["output_tokens_per_s"] for level in levels], **style)
        ttft_ax.plot(x, [_milliseconds(level["ttft_p50_s"]) for level in levels], **style)
    throughput_ax.set(title="output tokens/s", xlabel="concurrency", ylabel="tokens/s")
    ttft_ax.set(title="time to first token, p50", xlabel="concurrency", ylabel="ms (log scale)")
    ttft_ax.set_yscale("log")  # a server that queues requests takes seconds, the others milliseconds
    for ax in (throughput_ax, ttft_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result.concurrencies, [str(c) for c in result.concurrencies])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    figure.suptitle(f"{result.settings['model']}: one server at a time")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def write_reports(result: PeersResult, out: Path) -> list[Path]:
    """peers.md, peers.json and peers.png in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / TABLE_FILE
    table_path.write_text(markdown_table(result) + "\n", encoding="utf-8")
    json_path = out / JSON_FILE
    json_path.write_text(json.dumps(result_json(result), indent=2) + "\n", encoding="utf-8")
    return [table_path, json_path, write_plot(result, out / PLOT_FILE)]
