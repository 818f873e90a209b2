"""`gorgon bench features`' measuring: its rows, the order they run in, how rounds add up, and a whole run on a
tiny model in Vicuna v1.3's layout with Medusa-1 heads (tests/engine/vicuna_tiny.py)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gorgon.bench.engine_run import RunOutput
from gorgon.bench.features_run import (
    BASELINE,
    LOGIT_BIAS_TOKENS,
    MEDUSA,
    PLAIN,
    feature_groups,
    feature_rows,
    run_order,
    spread_logit_bias,
    summarise,
)
from gorgon.cli import main
from gorgon.engine.grammar import parse_response_format
from gorgon.engine.validation import check_sampling, check_token_ids

# vicuna_tiny lives with the engine tests, whose folder pytest puts on sys.path only when it collects them
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from vicuna_tiny import VOCAB, faster_decoding_heads, write_faster_decoding_heads, write_tiny_vicuna

HIDDEN = 64  # vicuna_tiny's


def test_every_row_asks_for_a_valid_request_of_one_feature() -> None:
    rows = feature_rows(VOCAB, 64)
    assert [row.name for row in rows] == [
        BASELINE,
        "logprobs",
        "penalties",
        "repetition_penalty",
        "logit_bias",
        "json_object",
        "json_schema",
        "n",
    ]
    by_name = {row.name: row for row in rows}
    baseline = by_name[BASELINE].params
    assert baseline.temperature == 0 and baseline.max_new_tokens == 64
    for row in rows:
        check_sampling(row.params)
        check_token_ids(row.params, VOCAB)
        changed = {
            name for name in type(baseline).__slots__ if getattr(row.params, name) != getattr(baseline, name)
        }
        assert len(changed) <= 2, row.name  # the presence and frequency penalties go together
    assert by_name["logprobs"].params.logprobs == 5
    assert by_name["repetition_penalty"].params.repetition_penalty == 1.2
    response_format = by_name["json_schema"].params.response_format
    assert parse_response_format(response_format) is not None  # the grammar engine takes it
    json_schema = json.loads(response_format or "")["json_schema"]
    assert json_schema["strict"] is True
    assert set(json_schema["schema"]["properties"]) == {"topic", "key_points", "is_science"}
    assert parse_response_format(by_name["json_object"].params.response_format) is not None
    assert "JSON" in by_name["json_schema"].prompt_suffix and "JSON" in by_name["json_object"].prompt_suffix
    assert by_name["n"].params == baseline and by_name["n"].repeats_prompt


def test_logit_bias_spreads_over_the_vocabulary() -> None:
    bias = spread_logit_bias(1000)
    tokens = [token for token, _ in bias]
    assert len(set(tokens)) == LOGIT_BIAS_TOKENS
    assert tokens[0] == 50 and tokens[-1] == 950
    assert all(0 < token < 1000 for token in tokens)


def test_the_n_row_repeats_each_prompt_and_skips_batch_one() -> None:
    rows = {row.name: row for row in feature_rows(VOCAB, 8)}
    prompts = [[1], [2], [3]]
    assert feature_groups(rows["n"], prompts, 4) == [[[1]] * 4, [[2]] * 4, [[3]] * 4]
    assert feature_groups(rows["n"], prompts, 1) == []
    assert feature_groups(rows[BASELINE], prompts, 2) == [[[1], [2]], [[3], [1]]]


def test_every_other_round_runs_in_reverse() -> None:
    keys = [(BASELINE, PLAIN, 1), (BASELINE, MEDUSA, 1), ("logprobs", PLAIN, 1)]
    order = run_order(keys, 3)
    assert order == [
        *((0, key) for key in keys),
        *((1, key) for key in reversed(keys)),
        *((2, key) for key in keys),
    ]


def test_rounds_add_up_to_medians_ratios_and_identity() -> None:
    def output(tokens: list[list[int]], seconds: float, per_step: float = 1.0) -> RunOutput:
        return RunOutput(tokens, seconds, per_step)

    same = [[1, 2, 3, 4]]
    outputs = {
        (BASELINE, PLAIN, 1): [output(same, 1.0), output(same, 2.0), output(same, 4.0)],
        (BASELINE, MEDUSA, 1): [output(same, 0.5, 2.0)] * 3,
        ("logprobs", PLAIN, 1): [output(same, 4.0)] * 3,
        ("logprobs", MEDUSA, 1): [output(same, 1.0, 3.0), output(same, 1.0, 2.0), output([[1, 2]], 1.0)],
    }
    results = {(r.feature, r.mode): r for r in summarise(outputs)}
    assert results[(BASELINE, PLAIN)].tokens_per_s == 2.0  # the median of 4, 2 and 1 tokens/s
    assert results[(BASELINE, PLAIN)].ratio_to_baseline == 1.0
    assert results[("logprobs", PLAIN)].ratio_to_baseline == 0.5
    assert results[("logprobs", MEDUSA)].ratio_to_baseline == 4.0 / 8.0
    assert results[("logprobs", MEDUSA)].tokens_per_step == 2.0
    assert results[("logprobs", MEDUSA)].tokens_per_sequence == (4 + 4 + 2) / 3
    assert results[(BASELINE, MEDUSA)].identical_to_plain is True
    assert results[("logprobs", MEDUSA)].identical_to_plain is False  # one round differed
    assert results[(BASELINE, PLAIN)].identical_to_plain is None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One run of the command on the tiny Vicuna (2 prompts of up to 8 new tokens, batch 1 and 2, 2 rounds): its
    JSON report and its --out directory."""
    directory = tmp_path_factory.mktemp("features")
    write_tiny_vicuna(directory / "model")
    write_faster_decoding_heads(
        faster_decoding_heads(HIDDEN, VOCAB), directory / "heads", "lmsys/vicuna-7b-v1.3"
    )
    arguments = [
        "bench",
        "features",
        "--model",
        str(directory / "model"),
        "--heads",
        str(directory / "heads"),
    ]
    arguments += ["--device", "cpu", "--dtype", "float32", "--no-deepspeed", "--prompts", "2"]
    arguments += ["--max-new-tokens", "8", "--batch-sizes", "1,2", "--json", "--out", str(directory / "out")]
    stdout = io.StringIO()
    threads = torch.get_num_threads()
    # one thread: a tiny model's steps are all hand-offs between threads, slow on a busy machine
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setenv("GORGON_ENGINE_THREADS", "1")
        assert main(arguments) == 0
    torch.set_num_threads(threads)
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 1, "stdout holds exactly one JSON object"
    return json.loads(lines[0]), directory / "out"


def test_a_run_measures_every_row_in_both_modes_at_every_batch(run: tuple[dict[str, Any], Path]) -> None:
    report, _ = run
    assert (report["prompts"], report["max_new_tokens"], report["rounds"]) == (2, 8, 2)
    names = [row.name for row in feature_rows(VOCAB, 8)]
    assert list(report["features"]) == names
    measured = {(r["feature"], r["mode"], r["batch"]) for r in report["results"]}
    expected = {(name, mode, batch) for name in names for mode in (PLAIN, MEDUSA) for batch in (1, 2)}
    assert measured == expected - {("n", PLAIN, 1), ("n", MEDUSA, 1)}


def test_a_run_decodes_identically_with_speculation_and_reports_rates(
    run: tuple[dict[str, Any], Path],
) -> None:
    report, _ = run
    for result in report["results"]:
        assert result["tokens_per_s"] > 0
        assert 1 <= result["tokens_per_sequence"] <= 8
        assert result["ratio_to_baseline"] > 0
        if result["mode"] == MEDUSA:
            assert result["identical_to_plain"] is True, result
            assert result["tokens_per_step"] >= 1
        else:
            assert result["identical_to_plain"] is None
            assert result["tokens_per_step"] == 1.0
        if result["feature"] == BASELINE:
            assert result["ratio_to_baseline"] == 1.0


def test_a_run_writes_its_report_and_chart(run: tuple[dict[str, Any], Path]) -> None:
    report, out = run
    assert json.loads((out / "features.json").read_text()) == report
    assert (out / "features.png").read_bytes().startswith(b"\x89PNG")
