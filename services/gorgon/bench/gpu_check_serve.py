"""The GPU check's serving phase: `gorgon up` with one worker on a private Redis, driven by `gorgon loadtest`
with many concurrent long prompts at once, and what it shows: failed requests (an out-of-memory step fails the
requests it held), worker restarts, out-of-memory errors in the platform's log.

A restart is counted two ways, since either alone can miss one: the lines in which `gorgon up`'s supervisor
reports a worker that exited, and worker ids registered at the end that were not at the start (a worker's id
holds its process id, so a restarted worker registers under a new one).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from gorgon.core.errors import GorgonError
from gorgon.core.redis.names import RedisNames
from gorgon.local.processes import free_port

log = logging.getLogger(__name__)

NAMESPACE = "gorgon-gpu-check"
UP_LOG = "up.log"
LOADTEST_DIR = "loadtest"
READY_LINE = re.compile(r"gorgon ready: (http://\S+) \(Redis (redis://\S+)\)")
OUT_OF_MEMORY = re.compile(r"out of memory|OutOfMemoryError", re.IGNORECASE)
SUPERVISOR_LOGGER = "gorgon.local.up"
STOP_TIMEOUT_S = 120.0  # `gorgon up` gives its workers their shutdown grace before it exits
LOG_TAIL_LINES = 20
# The parent's Redis is not the check's: `gorgon up` starts a private one when none is configured.
REDIS_URL_VARIABLES = ("REDIS_URL", "GORGON_REDIS_URL")


@dataclass(frozen=True, slots=True)
class ServingLoad:
    """What the load test sends: `concurrency` streams, one request each, of the prompts in `prompts`."""

    concurrency: int
    max_tokens: int
    prompts: Path
    timeout_s: float


def up_environment(engine_env: dict[str, str]) -> dict[str, str]:
    """This environment without a Redis of its own, with the engine settings, JSON logs (parsed for the
    supervisor's restarts) and the check's namespace."""
    inherited = {key: value for key, value in os.environ.items() if key not in REDIS_URL_VARIABLES}
    return inherited | engine_env | {"GORGON_LOG_FORMAT": "json", "GORGON_REDIS_NAMESPACE": NAMESPACE}


def up_command(model_flags: Sequence[str], ready_timeout_s: float) -> list[str]:
    """One always-running worker and no autoscaler: one GPU holds one worker."""
    return [
        *(sys.executable, "-m", "gorgon.cli", "up", "--port", str(free_port())),
        *("--workers", "1", "--max-workers", "1", "--ready-timeout", f"{ready_timeout_s:.0f}"),
        *model_flags,
    ]


def run_serving_check(
    model_flags: Sequence[str], engine_env: dict[str, str], load: ServingLoad, out: Path
) -> dict[str, Any]:
    """Start the platform, wait for its worker, run the load, stop it; the phase's report."""
    log_path = out / UP_LOG
    command = up_command(model_flags, load.timeout_s)
    log.info("serving: %s (its log: %s)", " ".join(command), log_path)
    with log_path.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            command, env=up_environment(engine_env), stdout=subprocess.PIPE, stderr=log_file, text=True
        )
        try:
            url, redis_url = _ready_urls(process, log_path)
            workers_at_start = live_worker_ids(redis_url)
            summary = run_loadtest(url, load, out / LOADTEST_DIR)
            workers_at_end = live_worker_ids(redis_url)
        finally:
            exit_status = stop_platform(process)
    log_text = log_path.read_text(encoding="utf-8", errors="replace")
    replaced = sorted(set(workers_at_end) - set(workers_at_start))
    return {
        "concurrency": load.concurrency,
        "max_tokens": load.max_tokens,
        "prompt_tokens_mean": mean_prompt_tokens(out / LOADTEST_DIR / "requests.csv"),
        "requests": summary["requests"],
        "completed": summary["completed"],
        "failed": summary["errors"],
        "error_types": summary["error_types"],
        "output_tokens_per_s": summary["output_tokens_per_s"],
        **{key: summary[key] for key in ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s")},
        "worker_restarts": max(logged_worker_restarts(log_text), len(replaced)),
        "workers_at_start": workers_at_start,
        "workers_at_end": workers_at_end,
        "out_of_memory_logged": bool(OUT_OF_MEMORY.search(log_text)),
        "up_exit_status": exit_status,
        "log": str(log_path),
        "loadtest": str(out / LOADTEST_DIR),
    }


def _ready_urls(process: subprocess.Popen[str], log_path: Path) -> tuple[str, str]:
    """The API's and Redis's URLs from `gorgon up`'s ready line (it exits on its own past --ready-timeout)."""
    line = process.stdout.readline() if process.stdout is not None else ""
    match = READY_LINE.match(line)
    if match is None:
        raise GorgonError(f"gorgon up did not become ready; its log ends:\n{log_tail(log_path)}")
    log.info("serving: ready at %s", match.group(1))
    return match.group(1), match.group(2)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def run_loadtest(url: str, load: ServingLoad, out: Path) -> dict[str, Any]:
    """`gorgon loadtest`, closed loop: every stream sends one speculative request at once; its summary.json."""
    command = [
        *(sys.executable, "-m", "gorgon.cli", "loadtest", "--url", url, "--out", str(out)),
        *("--concurrency", str(load.concurrency), "--requests", str(load.concurrency), "--speculative"),
        *("--prompts", str(load.prompts), "--max-tokens", str(load.max_tokens), "--no-progress"),
        *("--timeout", f"{load.timeout_s:.0f}", "--duration", f"{load.timeout_s:.0f}"),
    ]
    log.info("serving: %s", " ".join(command))
    try:
        # The load test's table goes with the progress, to stderr; every request failing exits 1, and
        # summary.json still tells why.
        subprocess.run(command, stdout=sys.stderr, timeout=2 * load.timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise GorgonError(f"the load test did not finish within {2 * load.timeout_s:.0f} s") from exc
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise GorgonError(f"the load test wrote no {summary_path} (its log is above)")
    summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
    return summary


def live_worker_ids(redis_url: str, namespace: str = NAMESPACE) -> list[str]:
    """The ids of the workers registered in `namespace` now."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.smembers(RedisNames(namespace).worker_index()))
        registrations = client.mget(keys) if keys else []
    finally:
        client.close()
    return sorted(orjson.loads(value)["worker_id"] for value in registrations if value)


def logged_worker_restarts(log_text: str) -> int:
    """Workers `gorgon up`'s supervisor found exited (and replaced), from its JSON log lines."""
    restarts = 0
    for line in log_text.splitlines():
        if not line.startswith("{"):
            continue  # progress bars and libraries' own prints share the stream
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        message = str(record.get("message", ""))
        if record.get("logger") == SUPERVISOR_LOGGER and "exited with" in message:
            restarts += 1
    return restarts


def mean_prompt_tokens(requests_csv: Path) -> float | None:
    """The prompt tokens the server counted, averaged over the requests that report them."""
    with requests_csv.open(newline="", encoding="utf-8") as handle:
        counts = [int(row["prompt_tokens"]) for row in csv.DictReader(handle) if row["prompt_tokens"]]
    return statistics.fmean(counts) if counts else None


def stop_platform(process: subprocess.Popen[str]) -> int:
    """Ctrl-C for `gorgon up` (it stops its workers, API and Redis); killed if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("gorgon up (pid %d) did not stop within %.0f s; killing it", process.pid, STOP_TIMEOUT_S)
        process.kill()
        return process.wait()
