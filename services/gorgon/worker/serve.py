"""`gorgon worker`: one worker process (engine + consume loop + probe endpoint)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import uuid

from gorgon.core.config import get_redis_settings
from gorgon.core.redis.connection import open_redis
from gorgon.core.redis.names import RedisNames
from gorgon.engine.config import DEFAULT_GGUF_FILE, DEFAULT_GGUF_PACKAGE, EngineSettings
from gorgon.local.settings_table import env_names, setting_default
from gorgon.worker.config import WorkerSettings

log = logging.getLogger(__name__)

ENGINE_OPTIONS = {"model": "model", "heads": "heads_path"}
"""Command-line options that set engine settings (option dest → EngineSettings field)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=["medusa", "echo"],
        help=f"engine (default: {setting_default(WorkerSettings, 'engine')})",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        help=f"probe/metrics port, 0 = any (default: {setting_default(WorkerSettings, 'http_port')})",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        help="requests decoded together (default: "
        f"{setting_default(WorkerSettings, 'max_batch_size', unset='the engine maximum')})",
    )
    parser.add_argument(
        "--worker-id",
        help="consumer name in the Redis group (default: "
        f"{setting_default(WorkerSettings, 'worker_id', unset='host name, process id and a random suffix')})",
    )
    parser.add_argument(
        "--echo-step-delay",
        type=float,
        help=f"echo engine: seconds per step (default: {setting_default(WorkerSettings, 'echo_step_delay_s')})",
    )
    add_model_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model and --heads: the engine settings GORGON_ENGINE_MODEL and GORGON_ENGINE_HEADS_PATH."""
    default_model = f"{DEFAULT_GGUF_FILE} from the {DEFAULT_GGUF_PACKAGE} package"
    parser.add_argument(
        "--model",
        help="model of the medusa engine: an HF model directory, a hub id or a .gguf file (default: "
        f"{setting_default(EngineSettings, 'model', unset=default_model)})",
    )
    default_heads = f"with the default model, {setting_default(EngineSettings, 'default_model_heads_path')}; with another, none"
    parser.add_argument(
        "--heads",
        help="Medusa heads of that model, a directory or a hub id; without heads speculation is off (default: "
        f"{setting_default(EngineSettings, 'heads_path', unset=default_heads)})",
    )


def engine_environment(args: argparse.Namespace) -> dict[str, str]:
    """The engine settings the command line gives, as the environment variables that set them."""
    environment = {}
    for option, name in ENGINE_OPTIONS.items():
        value = getattr(args, option, None)
        if value is not None:
            environment[env_names(EngineSettings, name, EngineSettings.model_fields[name])[0]] = str(value)
    return environment


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    overrides = {
        "engine": args.engine,
        "http_port": args.http_port,
        "max_batch_size": args.max_batch_size,
        "worker_id": args.worker_id,
        "echo_step_delay_s": args.echo_step_delay,
    }
    return WorkerSettings(**{key: value for key, value in overrides.items() if value is not None})


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def run(args: argparse.Namespace) -> int:
    import uvloop  # noqa: PLC0415 - installed with uvicorn[standard]

    settings = settings_from_args(args)
    os.environ.update(engine_environment(args))  # the engine reads its settings from the environment
    uvloop.run(serve(settings))
    return 0


async def serve(settings: WorkerSettings) -> None:
    from gorgon.core.tracing import configure_tracing  # noqa: PLC0415

    configure_tracing("gorgon-worker")
    from gorgon.worker import metrics  # noqa: PLC0415
    from gorgon.worker.engines import build_engine  # noqa: PLC0415 - may import torch
    from gorgon.worker.http import serve_probes  # noqa: PLC0415
    from gorgon.worker.main import Worker  # noqa: PLC0415

    redis_settings = get_redis_settings()
    redis = open_redis(redis_settings.url)
    names = RedisNames(redis_settings.namespace)
    worker: Worker | None = None
    waiting: asyncio.Task[None] | None = None
    probes = await serve_probes(
        settings.http_host, settings.http_port, lambda: worker is not None and worker.ready
    )
    try:
        engine = await asyncio.to_thread(metrics.timed_engine_build, build_engine, settings)
        worker_id = settings.worker_id or default_worker_id()
        worker = Worker(engine, redis, names, settings, worker_id)
        metrics.SERVED_MODEL.model_name = engine.info.name
        metrics.SERVED_MODEL.vllm_names = settings.vllm_metrics
        waiting = asyncio.create_task(
            metrics.track_waiting_share(redis, names, engine.info.name, settings.heartbeat_interval_s)
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.request_stop)
        log.info("worker %s serving model %s", worker_id, engine.info.name)
        gc.freeze()  # the engine and what start-up built live as long as the process: keep them out of collections
        await worker.run()
        log.info("worker %s stopped", worker_id)
        if worker.broken:
            raise SystemExit("the engine kept failing its steps; exiting so that the worker is replaced")
    finally:
        if waiting is not None:
            waiting.cancel()
        probes.close()
        await redis.aclose()
