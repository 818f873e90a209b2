"""`gorgon bench peers` without servers: the table's figures from recorded requests (percentiles, tokens/s,
errors), its Markdown, JSON and PNG, the peers' command lines, and the checks of its flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gorgon.bench import peers_run
from gorgon.bench.peers import add_arguments, config_from_args
from gorgon.bench.peers_report import markdown_table, result_json, table_rows, write_reports
from gorgon.bench.peers_run import PeersResult, VariantResult, peer_specs
from gorgon.bench.peers_servers import llamacpp_spec, vllm_preload, vllm_spec
from gorgon.core.errors import ConfigurationError
from gorgon_loadtest.record import LoadLevel, Mode, RequestRecord, RunResult, StreamOutcome
from gorgon_loadtest.stats import summarize_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def outcome(ttft_s: float, itls_s: list[float], tokens: int) -> StreamOutcome:
    """A completed stream: its first text at `ttft_s`, then a chunk after each gap in `itls_s`."""
    return StreamOutcome(
        ttft_s=ttft_s, itls_s=itls_s, e2e_s=ttft_s + sum(itls_s), output_tokens=tokens, finish_reason="length"
    )


def failed() -> StreamOutcome:
    return StreamOutcome(e2e_s=1.0, error_type="http_500", error="boom")


def level_summary(concurrency: int, outcomes: list[StreamOutcome], wall_s: float) -> dict:
    level = LoadLevel(Mode.STANDARD, concurrency=concurrency, server="peer")
    records = [RequestRecord(level, index, 0.0, item) for index, item in enumerate(outcomes)]
    return summarize_run(RunResult(level, records, wall_s))


def variant(label: str, levels: list[dict]) -> VariantResult:
    return VariantResult(label, label, "plain", ("serve", label), f"{label}.log", levels)


def result_of(
    *variants: VariantResult, skipped: dict[str, str] | None = None, concurrencies: tuple[int, ...] = (1, 4)
) -> PeersResult:
    settings = {
        "model": "SmolLM2",
        "max_tokens": 8,
        "requests_per_concurrency": 4,
        "concurrencies": list(concurrencies),
        "peer_threads": 1,
        "cores": 2,
    }
    return PeersResult(settings, list(variants), skipped or {})


@pytest.fixture
def measured() -> PeersResult:
    """One server at concurrency 1 (2 requests, 16 tokens in 2 s) and 4 (three completed, one failed)."""
    single = level_summary(1, [outcome(0.1, [0.05] * 7, 8), outcome(0.3, [0.05] * 7, 8)], wall_s=2.0)
    loaded = level_summary(
        4,
        [outcome(0.2, [0.01, 0.03], 3), outcome(0.4, [0.02], 2), outcome(0.9, [0.04], 2), failed()],
        wall_s=0.5,
    )
    return result_of(variant("gorgon, plain", [single, loaded]), skipped={"vllm": "no Python at /x"})


def test_a_row_holds_tokens_per_second_by_concurrency_and_latencies_at_the_highest(
    measured: PeersResult,
) -> None:
    (row,) = table_rows(measured)
    assert row["server"] == "gorgon, plain"
    assert row["output_tokens_per_s"] == {"1": pytest.approx(8.0), "4": pytest.approx(14.0)}
    assert row["latency_concurrency"] == 4
    assert row["ttft_p50_ms"] == pytest.approx(400.0)  # median of 200, 400, 900 ms; the failure has none
    assert row["itl_p50_ms"] == pytest.approx(25.0)  # 10, 20, 30, 40 ms: between the middle two
    assert row["tokens_per_request"] == pytest.approx((16 + 7) / 5)
    assert row["errors"] == 1


def test_tpot_counts_tokens_not_chunks() -> None:
    """A speculative chunk carries several tokens: ITL is per chunk, TPOT per token."""
    speculative = level_summary(1, [outcome(0.1, [0.06, 0.06], 7)], wall_s=1.0)
    (row,) = table_rows(result_of(variant("gorgon, speculative", [speculative]), concurrencies=(1,)))
    assert row["itl_p50_ms"] == pytest.approx(60.0)
    assert row["tpot_p50_ms"] == pytest.approx(20.0)  # 120 ms over the 6 tokens after the first


def test_the_markdown_table_has_a_column_per_concurrency_then_the_latencies(measured: PeersResult) -> None:
    lines = markdown_table(measured).splitlines()
    assert lines[0].startswith("SmolLM2, greedy, 8 output tokens at most, 4 streaming chat completions")
    assert lines[2] == (
        "| server | output tok/s, c=1 | output tok/s, c=4 | TTFT p50, c=4 (ms) | ITL p50, c=4 (ms) "
        "| TPOT p50, c=4 (ms) | tokens/request | errors |"
    )
    assert lines[3] == "|---|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[4] == "| gorgon, plain | 8.0 | 14.0 | 400 | 25.0 | 20.0 | 4.6 | 1 |"
    assert lines[-1] == "- vllm: skipped, no Python at /x"


def test_a_server_missing_a_concurrency_shows_a_dash() -> None:
    partial = result_of(variant("llama.cpp", [level_summary(1, [outcome(0.1, [0.1], 2)], wall_s=1.0)]))
    row = markdown_table(partial).splitlines()[4]
    assert row == "| llama.cpp | 2.0 | – | – | – | – | 2.0 | 0 |"


def test_the_json_holds_settings_rows_servers_and_skipped(measured: PeersResult) -> None:
    saved = json.loads(json.dumps(result_json(measured)))
    assert list(saved) == ["settings", "table", "servers", "skipped"]
    assert saved["table"] == json.loads(json.dumps(table_rows(measured)))
    (server,) = saved["servers"]
    assert server["command"] == ["serve", "gorgon, plain"]
    assert [level["concurrency"] for level in server["levels"]] == [1, 4]
    assert saved["skipped"] == {"vllm": "no Python at /x"}


def test_the_reports_are_written(measured: PeersResult, tmp_path: Path) -> None:
    paths = write_reports(measured, tmp_path / "out")
    assert [path.name for path in paths] == ["peers.md", "peers.json", "peers.png"]
    assert paths[0].read_text().startswith("SmolLM2, greedy")
    assert json.loads(paths[1].read_text())["table"][0]["errors"] == 1
    assert paths[2].read_bytes().startswith(PNG_SIGNATURE)


def test_vllm_serves_the_hf_copy_under_the_shared_name_on_pinned_cores(tmp_path: Path) -> None:
    spec = vllm_spec(tmp_path / "python", tmp_path / "hf", "SmolLM2", "bfloat16", "1", 8001, ("libiomp5.so",))
    command = list(spec.command)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--model") + 1] == str(tmp_path / "hf")
    assert command[command.index("--served-model-name") + 1] == "SmolLM2"
    assert command[command.index("--dtype") + 1] == "bfloat16"
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert int(spec.env["VLLM_CPU_KVCACHE_SPACE"]) > 0
    assert spec.env["LD_PRELOAD"].startswith("libiomp5.so")
    assert spec.url == "http://127.0.0.1:8001"


def test_vllm_preloads_the_openmp_runtime_of_its_venv(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib").mkdir()
    assert str(tmp_path / "lib" / "libiomp5.so") not in vllm_preload(tmp_path / "bin" / "python")
    (tmp_path / "lib" / "libiomp5.so").touch()
    assert str(tmp_path / "lib" / "libiomp5.so") in vllm_preload(tmp_path / "bin" / "python")


def test_llamacpp_serves_the_gguf_and_queues_requests_instead_of_interrupting(tmp_path: Path) -> None:
    command = list(llamacpp_spec(tmp_path / "python", tmp_path / "m.gguf", "SmolLM2", 3, 8002).command)
    assert command[1:3] == ["-m", "llama_cpp.server"]
    assert command[command.index("--model") + 1] == str(tmp_path / "m.gguf")
    assert command[command.index("--model_alias") + 1] == "SmolLM2"
    assert command[command.index("--n_threads") + 1] == "3"
    assert command[command.index("--n_threads_batch") + 1] == "3"
    assert command[command.index("--interrupt_requests") + 1] == "false"


def test_missing_peers_are_skipped_without_looking_for_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_model() -> None:
        raise AssertionError("the model's files are looked up only for an installed peer")

    monkeypatch.setattr(peers_run, "model_files", no_model)
    config = config_from_args(
        _parse(["--vllm-python", str(tmp_path / "v"), "--llamacpp-python", str(tmp_path / "l")])
    )
    skipped: dict[str, str] = {}
    assert peer_specs(config, "SmolLM2", 1, skipped) == []
    assert skipped == {
        "vllm": f"no Python at {tmp_path / 'v'} (make venv-vllm, or --vllm-python)",
        "llama.cpp": f"no Python at {tmp_path / 'l'} (make venv-llamacpp, or --llamacpp-python)",
    }
    assert f"vllm: skipped, no Python at {tmp_path / 'v'}" in caplog.text


def test_concurrencies_are_sorted_once_each() -> None:
    assert config_from_args(_parse(["--concurrency", "16,1,4,4"])).concurrencies == (1, 4, 16)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--requests", "0"], "--requests must be positive"),
        (["--max-tokens", "-1"], "--max-tokens must be positive"),
        (["--warmup", "-1"], "--warmup must not be negative"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--concurrency", "1,x"], "--concurrency must be comma-separated integers"),
    ],
)
def test_bad_flags_are_refused_before_any_server_starts(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        config_from_args(_parse(flags))


def _parse(flags: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(flags)
