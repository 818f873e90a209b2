"""What `gorgon bench peers` runs (peers.py holds its flags): each server in turn started, warmed up, driven at
every concurrency by gorgon_loadtest's closed loop, and stopped; a peer whose venv is missing, or that does not
start, is skipped with a one-line message.

Every server answers under the model name gorgon serves, gets the same prompts in the same order and the same
request body (OpenAI's fields, and `use_speculative`, which gorgon reads and the peers ignore), and the peers get
the compute threads a gorgon model worker gets under `gorgon up`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from gorgon.bench.peers_servers import (
    RunningServer,
    ServerFailedError,
    ServerSpec,
    gorgon_spec,
    llamacpp_spec,
    start,
    stop,
    vllm_preload,
    vllm_spec,
)
from gorgon.bench.prompts import BENCH_PROMPTS
from gorgon.local.capacity import model_worker_budget, usable_cores
from gorgon.local.processes import free_port
from gorgon.local.up import served_model
from gorgon_loadtest.plan import Bounds, RequestSettings, plan_levels
from gorgon_loadtest.record import Mode
from gorgon_loadtest.runner import LoadRunner
from gorgon_loadtest.stats import summarize_run
from gorgon_loadtest.target import Endpoint, Target

if TYPE_CHECKING:
    from gorgon.bench.peers import PeersConfig  # peers.py imports this module inside its run()
    from gorgon.engine.config import EngineSettings

log = logging.getLogger(__name__)

GORGON_MODES = (Mode.SPECULATIVE, Mode.STANDARD)
PEER_MODES = (Mode.STANDARD,)
MODE_LABELS = {Mode.SPECULATIVE: "speculative", Mode.STANDARD: "plain"}


@dataclass(frozen=True)
class VariantResult:
    """One server in one decoding mode: its row of the table, and each concurrency's load test summary."""

    label: str
    server: str
    mode: str
    command: tuple[str, ...]
    log_path: str
    levels: list[dict[str, Any]]


@dataclass
class PeersResult:
    settings: dict[str, Any]
    variants: list[VariantResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def concurrencies(self) -> tuple[int, ...]:
        return tuple(self.settings["concurrencies"])


@dataclass(frozen=True)
class ModelFiles:
    """What each peer serves: the HF directory (vLLM) in `dtype`, the GGUF file (llama.cpp); None with the
    reason in `missing` when the configured model has no such form."""

    hf_dir: Path | None
    gguf: Path | None
    dtype: str
    missing: dict[str, str] = field(default_factory=dict)


def _exit_on_sigterm(signum: int, _: object) -> None:
    raise SystemExit(128 + signum)


def run_peers(config: PeersConfig) -> PeersResult:
    """Start, drive and stop gorgon, then each installed peer; the figures of every one that ran."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that the server running is stopped on the way out
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    config.out.mkdir(parents=True, exist_ok=True)
    threads = config.threads or peer_threads()
    gorgon = start(gorgon_spec(free_port(), config.engine), config.out, config.ready_timeout_s)
    try:
        model_name = served_model(gorgon.spec.url)
        result = PeersResult(settings=describe(config, model_name, threads))
        result.variants += drive(gorgon, GORGON_MODES, config, model_name)
    finally:
        stop(gorgon)
    for spec in peer_specs(config, model_name, threads, result.skipped):
        result.variants += run_peer(spec, config, model_name, result.skipped)
    return result


def peer_threads() -> int:
    """The torch threads `gorgon up` gives a model worker here: the cores less those left to the HTTP server,
    Redis and a local client (local/capacity.py)."""
    return model_worker_budget(usable_cores(), default_max=1).threads


def describe(config: PeersConfig, model_name: str, threads: int) -> dict[str, Any]:
    return {
        "model": model_name,
        "endpoint": "/v1/chat/completions, streaming",
        "temperature": 0.0,
        "max_tokens": config.max_tokens,
        "requests_per_concurrency": config.requests,
        "prompts": len(BENCH_PROMPTS),
        "concurrencies": list(config.concurrencies),
        "warmup_requests": config.warmup,
        "peer_threads": threads,
        "cores": usable_cores(),
        "gorgon_engine": config.engine or "gorgon up's default",
    }


def peer_specs(
    config: PeersConfig, model_name: str, threads: int, skipped: dict[str, str]
) -> list[ServerSpec]:
    """The peers that are installed and have their model form; the others go into `skipped` with a reason."""
    vllm_python = _installed("vllm", config.vllm_python, "venv-vllm", "--vllm-python", skipped)
    llamacpp_python = _installed(
        "llama.cpp", config.llamacpp_python, "venv-llamacpp", "--llamacpp-python", skipped
    )
    if vllm_python is None and llamacpp_python is None:
        return []
    files = model_files()
    specs = []
    if vllm_python is not None and (hf_dir := _model_form("vllm", files.hf_dir, files, skipped)):
        cores = _core_list(threads)
        preload = vllm_preload(vllm_python)
        specs.append(vllm_spec(vllm_python, hf_dir, model_name, files.dtype, cores, free_port(), preload))
    if llamacpp_python is not None and (gguf := _model_form("llama.cpp", files.gguf, files, skipped)):
        specs.append(llamacpp_spec(llamacpp_python, gguf, model_name, threads, free_port()))
    return specs


def _installed(name: str, python: Path, make_target: str, flag: str, skipped: dict[str, str]) -> Path | None:
    if python.is_file():
        return python
    _skip(name, f"no Python at {python} (make {make_target}, or {flag})", skipped)
    return None


def _model_form(name: str, path: Path | None, files: ModelFiles, skipped: dict[str, str]) -> Path | None:
    if path is None:
        _skip(name, files.missing[name], skipped)
    return path


def _skip(name: str, reason: str, skipped: dict[str, str]) -> None:
    log.warning("%s: skipped, %s", name, reason)
    skipped[name] = reason


def _core_list(threads: int) -> str:
    """The first `threads` cores this process may run on, as a CPU list (vLLM binds one thread to each): its
    own automatic binding also leaves the last cores to its HTTP server and scheduler (and here the client),
    as `gorgon up` leaves a core to its API and Redis."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    return ",".join(map(str, cores))


def model_files() -> ModelFiles:
    """The configured model (GORGON_ENGINE_MODEL, else the default SmolLM2 GGUF) as each peer serves it; a GGUF
    model's HF copy is the engine's dequantized cache entry, written here first when gorgon has not yet."""
    from gorgon.engine.config import EngineSettings  # noqa: PLC0415 - torch loads with the engine modules
    from gorgon.engine.loader import (  # noqa: PLC0415
        dequantized_cache_entry,
        resolve_device,
        resolve_dtype,
        resolve_model_source,
    )

    settings = EngineSettings()
    source = resolve_model_source(settings)
    dtype = resolve_dtype(settings.dtype, resolve_device(settings.device))
    dtype_name = str(dtype).removeprefix("torch.")
    if source.gguf_file is None:
        reason = f"llama.cpp serves GGUF files, and the model is {source.location}"
        return ModelFiles(Path(source.location), None, dtype_name, {"llama.cpp": reason})
    gguf = Path(source.location) / source.gguf_file
    if settings.dequantized_cache_dir is None:
        reason = "vLLM serves the engine's dequantized copy, and GORGON_ENGINE_DEQUANTIZED_CACHE_DIR is empty"
        return ModelFiles(None, gguf, dtype_name, {"vllm": reason})
    entry = dequantized_cache_entry(source, dtype, settings.dequantized_cache_dir)
    if entry is not None and not entry.is_dir():
        _write_dequantized_copy(settings)
    return ModelFiles(entry, gguf, dtype_name)


def _write_dequantized_copy(settings: EngineSettings) -> None:
    """Load the model once without DeepSpeed: the loader saves its dequantized copy on the way."""
    from gorgon.engine.loader import load_model_and_tokenizer  # noqa: PLC0415

    log.info("writing the dequantized copy of the model for vLLM")
    load_model_and_tokenizer(settings.model_copy(update={"use_deepspeed": False}))


def run_peer(
    spec: ServerSpec, config: PeersConfig, model_name: str, skipped: dict[str, str]
) -> list[VariantResult]:
    """Start one peer, drive it and stop it; one that does not start is skipped."""
    try:
        server = start(spec, config.out, config.ready_timeout_s)
    except ServerFailedError as exc:
        _skip(spec.name, str(exc), skipped)
        return []
    try:
        return drive(server, PEER_MODES, config, model_name)
    finally:
        stop(server)


def drive(
    server: RunningServer, modes: tuple[Mode, ...], config: PeersConfig, model_name: str
) -> list[VariantResult]:
    """Warm `server` up in each mode, then every concurrency in each mode (modes interleaved at each)."""
    target = Target(server.spec.url, Endpoint.CHAT, name=server.spec.name)
    summaries = asyncio.run(_load(target, modes, config, model_name))
    variants = []
    for mode in modes:
        levels = [summary for summary in summaries if summary["mode"] == str(mode)]
        label = f"{server.spec.name}, {MODE_LABELS[mode]}" if len(modes) > 1 else server.spec.name
        _log_errors(label, levels)
        variants.append(
            VariantResult(
                label, server.spec.name, MODE_LABELS[mode], server.spec.command, str(server.log_path), levels
            )
        )
    return variants


async def _load(
    target: Target, modes: tuple[Mode, ...], config: PeersConfig, model_name: str
) -> list[dict[str, Any]]:
    settings = RequestSettings(max_tokens=config.max_tokens, temperature=0.0, model=model_name)
    bounds = Bounds(
        requests=config.requests,
        duration_s=config.request_timeout_s * config.requests,  # a bound the request timeouts already keep
        timeout_s=config.request_timeout_s,
        max_in_flight=max(config.concurrencies),
    )
    levels = plan_levels(concurrencies=config.concurrencies, rate=None, modes=modes, server=target.name)
    async with httpx.AsyncClient(timeout=httpx.Timeout(config.request_timeout_s), trust_env=False) as client:
        runner = LoadRunner(client, list(BENCH_PROMPTS), settings, bounds, show_progress=False)
        for mode in modes:
            await runner.warm_up(target, mode, config.warmup)
        return [summarize_run(await runner.run(target, level)) for level in levels]


def _log_errors(label: str, levels: list[dict[str, Any]]) -> None:
    for summary in levels:
        if summary["errors"]:
            log.warning(
                "%s at concurrency %d: %d of %d requests failed: %s",
                label,
                summary["concurrency"],
                summary["errors"],
                summary["requests"],
                summary["error_types"],
            )
