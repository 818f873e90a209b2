"""`gorgon bench peers` end to end on `gorgon up --engine echo`, the peers forced absent; and the starting and
stopping of a server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gorgon.bench.peers_servers import ServerFailedError, ServerSpec, start, stop
from gorgon.local.processes import free_port

pytestmark = pytest.mark.processes

BENCH_TIMEOUT_S = 150.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_bench_drives_gorgon_skips_missing_peers_and_writes_its_reports(tmp_path: Path) -> None:
    out = tmp_path / "out"
    missing_vllm, missing_llamacpp = tmp_path / "no-vllm" / "python", tmp_path / "no-llamacpp" / "python"
    command = [sys.executable, "-m", "gorgon.cli", "bench", "peers", "--engine", "echo"]
    command += ["--concurrency", "1,2", "--requests", "2", "--max-tokens", "8", "--out", str(out)]
    command += ["--vllm-python", str(missing_vllm), "--llamacpp-python", str(missing_llamacpp)]
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "GORGON_REDIS_URL"}}
    finished = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=False
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"vllm: skipped, no Python at {missing_vllm} (make venv-vllm, or --vllm-python)" in finished.stderr
    assert f"llama.cpp: skipped, no Python at {missing_llamacpp}" in finished.stderr

    table = (out / "peers.md").read_text()
    assert finished.stdout.strip() == table.strip()
    lines = table.splitlines()
    assert lines[2] == (
        "| server | output tok/s, c=1 | output tok/s, c=2 | TTFT p50, c=2 (ms) | ITL p50, c=2 (ms) "
        "| TPOT p50, c=2 (ms) | tokens/request | errors |"
    )
    assert [line.split(" | ")[0] for line in lines[4:6]] == ["| gorgon, speculative", "| gorgon, plain"]
    assert lines[-2].startswith("- vllm: skipped") and lines[-1].startswith("- llama.cpp: skipped")

    saved = json.loads((out / "peers.json").read_text())
    assert saved["settings"]["model"] == "echo"
    assert saved["settings"]["concurrencies"] == [1, 2]
    for row in saved["table"]:
        assert row["errors"] == 0
        assert row["tokens_per_request"] == 8.0
        assert all(tokens_per_s > 0 for tokens_per_s in row["output_tokens_per_s"].values())
        assert row["ttft_p50_ms"] > 0
    assert [server["mode"] for server in saved["servers"]] == ["speculative", "plain"]
    assert [level["requests"] for level in saved["servers"][0]["levels"]] == [2, 2]
    assert set(saved["skipped"]) == {"vllm", "llama.cpp"}
    assert (out / "peers.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "gorgon ready: " in (out / "gorgon.log").read_text()


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    spec = ServerSpec(
        "quits", (sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"), {}, free_port()
    )
    with pytest.raises(ServerFailedError, match=f"quits exited with status 3; see {tmp_path / 'quits.log'}"):
        start(spec, tmp_path, timeout_s=30)
    assert (tmp_path / "quits.log").read_text() == "bad flag\n"


def test_stopping_a_server_ends_what_it_left_running(tmp_path: Path) -> None:
    """A server whose child outlives it (vLLM's engine core, `gorgon up`'s workers) leaves nothing behind."""
    script = "sleep 300 & echo child $!; echo ready; wait"
    spec = ServerSpec(
        "leaves-a-child", ("sh", "-c", script), dict(os.environ), free_port(), ready_line="ready"
    )
    server = start(spec, tmp_path, timeout_s=30)
    child = int(server.log_path.read_text().split()[1])
    assert _running(child)
    stop(server, grace_s=5)
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
