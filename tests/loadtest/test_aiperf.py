"""A public benchmark tool runs unmodified against gorgon: AIPerf (NVIDIA's successor to GenAI-Perf), its default
OpenAI profile (chat completions) streamed, a few requests against `gorgon up --engine echo`, must report time to
first token and inter-token latency for every request, with no errors.

AIPerf pins its own dependencies, so it lives in a venv of its own (`make aiperf` → .venv-aiperf; `make test`
creates it). It counts tokens with a tokenizer; the echo engine's tokens are bytes, so the test hands it a
byte-level tokenizer built on the spot (a hub tokenizer would need the network)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

pytestmark = pytest.mark.processes

AIPERF = Path(__file__).resolve().parents[2] / ".venv-aiperf" / "bin" / "aiperf"
REQUESTS = 8
AIPERF_TIMEOUT_S = 180


def byte_tokenizer(directory: Path) -> Path:
    """A Hugging Face tokenizer of one token per byte, as the echo engine counts them, saved to `directory`."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(
        models.BPE(vocab={symbol: index for index, symbol in enumerate(alphabet)}, merges=[])
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(directory)
    return directory


@pytest.mark.skipif(not AIPERF.exists(), reason="AIPerf is not installed: `make aiperf` creates .venv-aiperf")
def test_aiperf_reports_time_to_first_token_and_inter_token_latency(echo_stack: str, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    command = [
        str(AIPERF),
        "profile",
        "--model",
        "echo",
        "--url",
        echo_stack,
        "--streaming",
        "--tokenizer",
        str(byte_tokenizer(tmp_path / "tokenizer")),
        "--request-count",
        str(REQUESTS),
        "--concurrency",
        "2",
        "--output-artifact-dir",
        str(artifacts),
    ]
    run = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=AIPERF_TIMEOUT_S, check=False
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    assert summary["error_summary"] == [] and summary["is_complete"]
    assert summary["request_count"]["avg"] == REQUESTS
    for metric in ("time_to_first_token", "inter_token_latency"):
        assert summary[metric]["count"] == REQUESTS, metric
        assert 0 < summary[metric]["avg"] < summary["request_latency"]["max"], metric
    assert summary["output_sequence_length"]["min"] > 1, "streams of several tokens each"
