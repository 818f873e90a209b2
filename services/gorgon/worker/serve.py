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
from gorgon.worker.config import WorkerSettings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["medusa", "echo"], help="engine (default: GORGON_WORKER_ENGINE)")
    parser.add_argument("--http-port", type=int, help="probe/metrics port, 0 = any (GORGON_WORKER_HTTP_PORT)")
    parser.add_argument(
        "--max-batch-size", type=int, help="requests decoded together (GORGON_WORKER_MAX_BATCH_SIZE)"
    )
    parser.add_argument("--worker-id", help="consumer name in the Redis group (GORGON_WORKER_WORKER_ID)")
    parser.add_argument("--echo-step-delay", type=float, help="echo engine: seconds per step")


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
    uvloop.run(serve(settings))
    return 0


async def serve(settings: WorkerSettings) -> None:
    from gorgon.core.tracing import configure_tracing  # noqa: PLC0415

    configure_tracing("gorgon-worker")
    from gorgon.worker.engines import build_engine  # noqa: PLC0415 - may import torch
    from gorgon.worker.http import serve_probes  # noqa: PLC0415
    from gorgon.worker.main import Worker  # noqa: PLC0415
    from gorgon.worker.metrics import timed_engine_build  # noqa: PLC0415

    redis_settings = get_redis_settings()
    redis = open_redis(redis_settings.url)
    worker: Worker | None = None
    probes = await serve_probes(
        settings.http_host, settings.http_port, lambda: worker is not None and worker.ready
    )
    try:
        engine = await asyncio.to_thread(timed_engine_build, build_engine, settings)
        worker_id = settings.worker_id or default_worker_id()
        worker = Worker(engine, redis, RedisNames(redis_settings.namespace), settings, worker_id)
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
        probes.close()
        await redis.aclose()
