"""The servers `gorgon bench peers` compares: their command lines (pure functions), and starting one, waiting
until it serves, and stopping it with every process it started.

Each server runs in a session of its own, its stdout and stderr in one log file: stopping it sends SIGTERM to
the server, then after a grace SIGKILL to whatever is left of its session (vLLM's engine core runs in a child
process, `gorgon up`'s workers too).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
GORGON_READY_LINE = "gorgon ready: "
"""The line `gorgon up` prints on stdout once its API answers and its first worker registered."""
POLL_S = 0.5
STOP_GRACE_S = 60.0
PEER_CONTEXT_TOKENS = 2048
"""Context of the peers' KV caches: the longest prompt plus --max-tokens fits many times over."""
VLLM_KV_CACHE_GIB = 4
"""vLLM's CPU KV cache in GiB (VLLM_CPU_KVCACHE_SPACE). Unset, vLLM claims 90 % of the machine's memory
(`--gpu-memory-utilization` of it) and refuses to start while other processes hold more than a tenth; 4 GiB
holds 16 streams of PEER_CONTEXT_TOKENS many times over for a 135M model."""


class ServerFailedError(RuntimeError):
    """A server exited or did not serve in time; the message names its log."""


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server: its command line, environment and port; `ready_line` is a line its output shows
    once it serves (else it serves once /v1/models answers 200)."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    port: int
    ready_line: str | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass
class RunningServer:
    spec: ServerSpec
    process: subprocess.Popen[bytes]
    log_path: Path


def gorgon_spec(port: int, engine: str | None) -> ServerSpec:
    """`gorgon up` with its defaults (its own Redis, worker count and threads), on `port`."""
    command = [sys.executable, "-m", "gorgon.cli", "up", "--port", str(port)]
    if engine:
        command += ["--engine", engine]
    return ServerSpec("gorgon", tuple(command), dict(os.environ), port, ready_line=GORGON_READY_LINE)


def vllm_spec(
    python: Path,
    model_dir: Path,
    model_name: str,
    dtype: str,
    cores: str,
    port: int,
    preload: tuple[str, ...] = (),
) -> ServerSpec:
    """vLLM's OpenAI server on the HF copy of the model, its compute threads pinned to `cores` (a CPU list,
    e.g. "1" or "0-3"): vLLM's CPU build binds one OpenMP thread per listed core. `preload` are the libraries
    its CPU guide has preloaded for speed (vllm_preload)."""
    command = (
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        model_name,
        "--host",
        HOST,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(PEER_CONTEXT_TOKENS),
    )
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(VLLM_KV_CACHE_GIB),
        "VLLM_CPU_OMP_THREADS_BIND": cores,
    }
    if preload:
        env["LD_PRELOAD"] = ":".join([*preload, *filter(None, [os.environ.get("LD_PRELOAD")])])
    return ServerSpec("vllm", command, env, port)


def vllm_preload(python: Path) -> tuple[str, ...]:
    """What vLLM's CPU guide preloads on x86: tcmalloc (Debian's libtcmalloc-minimal4), where installed, and
    Intel's OpenMP runtime, which vllm-cpu installs into its venv; without them vLLM warns and runs slower."""
    tcmalloc = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    iomp = python.parent.parent / "lib" / "libiomp5.so"
    return tuple(str(library) for library in (tcmalloc, iomp if iomp.is_file() else None) if library)


def llamacpp_spec(python: Path, gguf: Path, model_name: str, threads: int, port: int) -> ServerSpec:
    """llama-cpp-python's OpenAI server on the GGUF file itself (its chat template comes from the file), on
    `threads` threads for prompts as for decoding (by default it prefills on every core). It serves one request
    at a time, and by default ends a stream early when another request waits (`interrupt_requests`): off, so
    that waiting requests queue as in every other server."""
    command = (
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        model_name,
        "--host",
        HOST,
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(PEER_CONTEXT_TOKENS),
        "--interrupt_requests",
        "false",
    )
    return ServerSpec("llama.cpp", command, dict(os.environ), port)


def start(spec: ServerSpec, log_dir: Path, timeout_s: float) -> RunningServer:
    """Start `spec` and wait until it serves; a server that does not is stopped and ServerFailedError raised."""
    log_path = log_dir / f"{spec.name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            list(spec.command),
            env=dict(spec.env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = RunningServer(spec, process, log_path)
    log.info("%s: started pid %d (log %s): %s", spec.name, process.pid, log_path, " ".join(spec.command))
    try:
        _wait_until_serving(server, timeout_s)
    except ServerFailedError:
        stop(server)
        raise
    log.info("%s: serving at %s", spec.name, spec.url)
    return server


def _wait_until_serving(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _serving(server):
        if server.process.poll() is not None:
            raise ServerFailedError(
                f"{server.spec.name} exited with status {server.process.returncode}; see {server.log_path}"
            )
        if time.monotonic() > deadline:
            raise ServerFailedError(
                f"{server.spec.name} did not serve within {timeout_s:.0f} s; see {server.log_path}"
            )
        time.sleep(POLL_S)


def _serving(server: RunningServer) -> bool:
    if server.spec.ready_line is not None:
        return server.spec.ready_line in server.log_path.read_text(errors="replace")
    try:
        return httpx.get(f"{server.spec.url}/v1/models", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def stop(server: RunningServer, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the server, then SIGKILL to what is left of its session after `grace_s`."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s: still running %.0f s after SIGTERM; killing it", server.spec.name, grace_s)
    with contextlib.suppress(ProcessLookupError):  # none of its session left
        os.killpg(process.pid, signal.SIGKILL)  # the children it may have left behind
    process.wait()
    log.info("%s: stopped", server.spec.name)
