"""`gorgon bench features`: its flags and their checks, the ratio to the baseline, the Markdown table, and the JSON
and chart it writes (on a report built by hand; test_features_run.py measures one)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gorgon.bench.features import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_PROMPTS,
    DEFAULT_ROUNDS,
    add_arguments,
    config_from_args,
    markdown_table,
)
from gorgon.bench.features_run import (
    BASELINE,
    MEDUSA,
    PLAIN,
    FeatureResult,
    FeaturesReport,
    ratio_to_baseline,
)
from gorgon.bench.prompts import BENCH_PROMPTS
from gorgon.cli import main
from gorgon.core.errors import ConfigurationError


def parse(*arguments: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(arguments)


def test_defaults_match_the_issue() -> None:
    config = config_from_args(parse())
    assert (DEFAULT_PROMPTS, DEFAULT_MAX_NEW_TOKENS, DEFAULT_BATCH_SIZES, DEFAULT_ROUNDS) == (
        8,
        64,
        (1, 4),
        2,
    )
    assert config.prompts == BENCH_PROMPTS[:8]
    assert (config.max_new_tokens, config.batch_sizes, config.rounds, config.out) == (64, (1, 4), 2, None)
    args = parse()
    assert (args.model, args.heads, args.device, args.dtype, args.no_deepspeed) == (
        None,
        None,
        "auto",
        "auto",
        False,
    )


def test_flags_set_the_run(tmp_path: Path) -> None:
    config = config_from_args(
        parse(
            "--prompts",
            "2",
            "--max-new-tokens",
            "8",
            "--batch-sizes",
            "1, 2,8",
            "--rounds",
            "3",
            "--out",
            str(tmp_path),
        )
    )
    assert config.prompts == BENCH_PROMPTS[:2]
    assert (config.max_new_tokens, config.batch_sizes, config.rounds, config.out) == (
        8,
        (1, 2, 8),
        3,
        tmp_path,
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--prompts", "0"), "--prompts must lie in [1, 16], got 0"),
        (("--prompts", "17"), "--prompts must lie in [1, 16], got 17"),
        (("--max-new-tokens", "0"), "--max-new-tokens must be at least 1, got 0"),
        (("--rounds", "0"), "--rounds must be at least 1, got 0"),
        (("--batch-sizes", "1,x"), "--batch-sizes must be comma-separated integers, got '1,x'"),
        (("--batch-sizes", "0"), "--batch-sizes must be positive integers, got '0'"),
    ],
)
def test_bad_flags_are_one_line_errors_before_anything_loads(
    arguments: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigurationError, match="^" + message.replace("[", r"\[").replace("]", r"\]") + "$"):
        config_from_args(parse(*arguments))
    assert main(["bench", "features", *arguments, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"gorgon: error: {message}\n"


def test_out_must_be_a_directory(tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("")
    with pytest.raises(ConfigurationError, match="is not a directory"):
        config_from_args(parse("--out", str(file)))


def test_the_ratio_is_to_the_baseline_of_the_same_mode_and_batch() -> None:
    rates = {
        (BASELINE, PLAIN, 1): 40.0,
        (BASELINE, MEDUSA, 1): 80.0,
        (BASELINE, PLAIN, 4): 100.0,
        ("logprobs", PLAIN, 1): 30.0,
        ("logprobs", MEDUSA, 1): 60.0,
        ("logprobs", PLAIN, 4): 90.0,
        ("logprobs", MEDUSA, 4): 50.0,
        ("n", PLAIN, 4): 150.0,
        (BASELINE, MEDUSA, 4): 0.0,
    }
    assert ratio_to_baseline(rates, (BASELINE, PLAIN, 1)) == 1.0
    assert ratio_to_baseline(rates, ("logprobs", PLAIN, 1)) == 0.75
    assert ratio_to_baseline(rates, ("logprobs", MEDUSA, 1)) == 0.75
    assert ratio_to_baseline(rates, ("logprobs", PLAIN, 4)) == 0.9
    assert ratio_to_baseline(rates, ("n", PLAIN, 4)) == 1.5
    assert (
        ratio_to_baseline(rates, ("logprobs", MEDUSA, 4)) is None
    )  # a baseline of 0 tokens/s divides nothing
    assert ratio_to_baseline({("logprobs", PLAIN, 2): 5.0}, ("logprobs", PLAIN, 2)) is None


def result(
    feature: str, mode: str, batch: int, rate: float, ratio: float | None, **changes: Any
) -> FeatureResult:
    medusa = mode == MEDUSA
    measured = FeatureResult(
        feature,
        mode,
        batch,
        tokens_per_s=rate,
        ratio_to_baseline=ratio,
        tokens_per_step=2.25 if medusa else 1.0,
        tokens_per_sequence=64.0,
        identical_to_plain=True if medusa else None,
    )
    return replace(measured, **changes)


def sample_report() -> FeaturesReport:
    results = [
        result(BASELINE, PLAIN, 1, 30.0, 1.0),
        result(BASELINE, MEDUSA, 1, 45.0, 1.0),
        result("json_schema", PLAIN, 1, 24.0, 0.8, tokens_per_sequence=21.5),
        result("json_schema", MEDUSA, 1, 33.75, 0.75, tokens_per_step=1.8125, identical_to_plain=False),
        result(BASELINE, PLAIN, 4, 100.0, 1.0),
        result(BASELINE, MEDUSA, 4, 104.0, 1.0),
        result("n", PLAIN, 4, 150.0, 1.5),
        result("n", MEDUSA, 4, 1234.5, None),
    ]
    features = {BASELINE: "baseline (greedy)", "json_schema": "json_schema, 3 properties", "n": "n = batch"}
    return FeaturesReport("SmolLM2", "cpu", "bfloat16", 8, 64, 2, features, results)


def test_the_table_puts_both_modes_of_a_row_side_by_side_batch_by_batch() -> None:
    lines = markdown_table(sample_report()).splitlines()
    assert lines[0].startswith(
        "SmolLM2 on cpu (bfloat16), greedy, 8 prompts, up to 64 new tokens each, median of 2"
    )
    assert lines[1] == ""
    assert lines[2] == (
        "| feature | batch | plain tok/s | plain × baseline | Medusa tok/s | Medusa × baseline "
        "| Medusa tokens/step | tokens/sequence | identical to plain |"
    )
    assert lines[3] == "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    assert lines[4:] == [
        "| baseline (greedy) | 1 | 30.0 | 1.00× | 45.0 | 1.00× | 2.25 | 64.0 | yes |",
        "| json_schema, 3 properties | 1 | 24.0 | 0.80× | 33.8 | 0.75× | 1.81 | 21.5 | **no** |",
        "| baseline (greedy) | 4 | 100.0 | 1.00× | 104.0 | 1.00× | 2.25 | 64.0 | yes |",
        "| n = batch | 4 | 150.0 | 1.50× | 1234.5 | – | 2.25 | 64.0 | yes |",
    ]


def test_a_mode_missing_from_a_row_shows_dashes() -> None:
    report = sample_report()
    report.results[:] = [r for r in report.results if (r.feature, r.mode) != ("json_schema", MEDUSA)]
    row = next(line for line in markdown_table(report).splitlines() if line.startswith("| json_schema"))
    assert row == "| json_schema, 3 properties | 1 | 24.0 | 0.80× | – | – | – | 21.5 | – |"


def test_json_and_out_carry_the_whole_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from gorgon.bench import features_run

    seen: dict[str, object] = {}

    def fake_run(args: argparse.Namespace, **settings: object) -> FeaturesReport:
        seen.update(settings)
        return sample_report()

    monkeypatch.setattr(features_run, "run_features", fake_run)
    out = tmp_path / "results"
    assert main(["bench", "features", "--prompts", "3", "--rounds", "1", "--json", "--out", str(out)]) == 0
    assert seen == {"prompts": BENCH_PROMPTS[:3], "max_new_tokens": 64, "batch_sizes": (1, 4), "rounds": 1}
    stdout = capsys.readouterr().out
    assert len(stdout.splitlines()) == 1
    report = json.loads(stdout)
    assert json.loads((out / "features.json").read_text()) == report
    assert set(report) == {
        "model",
        "device",
        "dtype",
        "prompts",
        "max_new_tokens",
        "rounds",
        "features",
        "results",
    }
    assert report["results"][3] == {
        "feature": "json_schema",
        "mode": MEDUSA,
        "batch": 1,
        "tokens_per_s": 33.75,
        "ratio_to_baseline": 0.75,
        "tokens_per_step": 1.8125,
        "tokens_per_sequence": 64.0,
        "identical_to_plain": False,
    }
    assert (out / "features.png").read_bytes().startswith(b"\x89PNG")


def test_without_json_the_table_is_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gorgon.bench import features_run

    monkeypatch.setattr(features_run, "run_features", lambda args, **_: sample_report())
    assert main(["bench", "features"]) == 0
    assert capsys.readouterr().out == markdown_table(sample_report())
