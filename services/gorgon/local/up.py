"""`gorgon up` (= `make run`): the whole platform on this machine.

Redis (REDIS_URL, or an embedded private server), the API on --port, --workers always-running worker processes
and the operator's local autoscaler, which adds workers by queue backlog up to --max-workers; it prints
one `gorgon ready: <url>` line on stdout once the API answers /ready and the first worker is registered,
restarts a worker that dies, and on Ctrl-C / SIGTERM stops everything (workers get their shutdown grace) and
removes the embedded Redis.

Model workers are sized to the machine (local/capacity.py): by default no more of them than the cores feed (and,
once the first has loaded its model, than the memory holds), each with the cores left to it as its torch threads
(GORGON_ENGINE_THREADS); --max-workers and GORGON_ENGINE_THREADS override.

With --workers 0 no worker runs until the first request: the API serves the configured model
(GORGON_API_SERVED_MODELS; the echo engine's is known) with none up, and the autoscaler starts one for the
backlog (and stops it again after the scaling policy's idle period).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from gorgon.core.errors import ConfigurationError, GorgonError
from gorgon.local.capacity import (
    CORES_PER_MODEL_WORKER,
    available_memory,
    memory_fit,
    model_worker_budget,
    resident_memory,
    usable_cores,
)
from gorgon.local.processes import (
    api_command,
    registered_workers,
    service_env,
    spawn,
    stop_all,
    worker_command,
)
from gorgon.local.settings_table import setting_default
from gorgon.worker.config import WorkerSettings
from gorgon.worker.serve import add_model_arguments, engine_environment

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000
READY_TIMEOUT_S = 900.0
MODELS_TIMEOUT_S = 30.0
POLL_S = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="API port")
    parser.add_argument(
        "--engine",
        choices=["medusa", "echo"],
        help=f"worker engine (default: {setting_default(WorkerSettings, 'engine')})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="always-running worker processes (0: none until the first request, which the local autoscaler "
        "starts one for)",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        help="with the local autoscaler: most workers in all, extra ones started by backlog; equal to --workers "
        "turns autoscaling off (default: the scaling policy's max_replicas + --workers - 1, and for model "
        "workers no more than the cores feed, one per "
        f"{CORES_PER_MODEL_WORKER} cores beyond the API's, and the memory holds)",
    )
    parser.add_argument(
        "--echo-step-delay",
        type=float,
        help=f"echo engine: seconds per decoding step (default: {setting_default(WorkerSettings, 'echo_step_delay_s')})",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--ready-timeout", type=float, default=READY_TIMEOUT_S, help="seconds to wait for the first worker"
    )


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigurationError(f"port {port} is already in use; choose another with --port") from exc


@dataclass
class LocalPlatform:
    port: int
    workers: int
    worker_cmd: list[str]
    env: dict[str, str]
    api: subprocess.Popen[bytes] | None = None
    worker_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.api = spawn(api_command(self.port), self.env)
        self.worker_processes = [spawn(self.worker_cmd, self.env) for _ in range(self.workers)]
        log.info("started the API (pid %d) and %d worker(s)", self.api.pid, self.workers)

    def wait_ready(self, timeout_s: float, stopping: list[bool], redis_url: str, namespace: str) -> None:
        """Until the API answers /ready and, with always-running workers, the first of them is registered and
        the API lists its model (its list is cached: a client's first /v1/models must name the model)."""
        from gorgon.local.progress import waiting  # noqa: PLC0415

        deadline = time.monotonic() + timeout_s
        what = "the API and a worker (the model loads first)" if self.workers else "the API"
        with waiting(f"waiting for {what}") as tick:
            while not stopping:
                self._check_api_alive()
                if self._api_ready() and (not self.workers or self._api_lists_a_model(redis_url, namespace)):
                    return
                if time.monotonic() > deadline:
                    raise GorgonError(
                        f"{what} did not become ready within {timeout_s:.0f} s; see the log above"
                    )
                tick()
                time.sleep(POLL_S)

    def _api_ready(self) -> bool:
        import httpx  # noqa: PLC0415

        try:
            return httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _api_lists_a_model(self, redis_url: str, namespace: str) -> bool:
        import httpx  # noqa: PLC0415

        if registered_workers(redis_url, namespace) == 0:
            return False
        try:
            return bool(httpx.get(f"{self.url}/ready", timeout=2).json().get("models"))
        except (httpx.HTTPError, ValueError):
            return False

    def supervise(self, stopping: list[bool]) -> None:
        """Until asked to stop: keep the worker count, fail if the API dies."""
        while not stopping:
            self._check_api_alive()
            for index, process in enumerate(self.worker_processes):
                if process.poll() is not None:
                    log.warning(
                        "worker pid %d exited with %s; starting a new one", process.pid, process.returncode
                    )
                    self.worker_processes[index] = spawn(self.worker_cmd, self.env)
            time.sleep(POLL_S)

    def _check_api_alive(self) -> None:
        if self.api is not None and self.api.poll() is not None:
            raise GorgonError(f"the API process exited with status {self.api.returncode}; see the log above")

    def stop(self) -> None:
        stop_all([*self.worker_processes, *([self.api] if self.api is not None else [])])


@dataclass
class BackgroundAutoscaler:
    """The operator's local autoscaler, running in a thread with its own event loop."""

    thread: threading.Thread
    stop_event: threading.Event

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)


def served_model(url: str, timeout_s: float = MODELS_TIMEOUT_S) -> str:
    """The model the API serves, once it lists one: its list is cached for GORGON_API_MODEL_CACHE_S, so right
    after the first worker registered it may still be empty."""
    import httpx  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    while not (models := httpx.get(f"{url}/ready", timeout=5).json()["models"]):
        if time.monotonic() > deadline:
            raise GorgonError(f"the API listed no served model within {timeout_s:.0f} s")
        time.sleep(POLL_S)
    return str(models[0])


def policy_max_workers(args: argparse.Namespace) -> int | None:
    """Workers in all the operator's default scaling policy allows next to --workers; None when the operator's
    package is not installed (then there is no local autoscaler)."""
    try:
        from gorgon_operator.policy import ScalingPolicy  # noqa: PLC0415
    except ImportError as exc:
        log.warning("no local autoscaler (%s)", exc)
        return None
    return ScalingPolicy().max_replicas + max(args.workers, 1) - 1


@dataclass(frozen=True)
class WorkerPlan:
    max_workers: int
    """Workers in all: the autoscaler adds up to this many minus the always-running ones."""
    threads: int | None
    """GORGON_ENGINE_THREADS for the model workers; None leaves it alone (echo engine, or set by the user)."""
    memory_capped: bool
    """Model workers sized by default: once the first has loaded, the memory may lower max_workers."""


def plan_workers(args: argparse.Namespace, engine: str, policy_max: int | None) -> WorkerPlan:
    """How many workers, with how many threads: the echo engine by the scaling policy (or --max-workers);
    model workers by this machine's cores too (local/capacity.py)."""
    default_max = policy_max if policy_max is not None else args.workers
    if engine == "echo":
        return WorkerPlan(args.max_workers or default_max, None, memory_capped=False)
    from gorgon.engine.config import EngineSettings  # noqa: PLC0415

    cores = usable_cores()
    budget = model_worker_budget(cores, default_max, args.max_workers, args.workers)
    threads = EngineSettings().threads
    log.info(
        "%d cores: up to %d model worker(s), %d torch thread(s) each%s",
        cores,
        budget.max_workers,
        threads or budget.threads,
        " (GORGON_ENGINE_THREADS)" if threads else "",
    )
    return WorkerPlan(
        budget.max_workers, None if threads else budget.threads, memory_capped=not args.max_workers
    )


def memory_capped_extra(platform: LocalPlatform, extra: int) -> int:
    """`extra` lowered to what the available memory holds, by the resident size of the first worker (which has
    loaded its model by now); unchanged where either is unknown."""
    worker_bytes = resident_memory(platform.worker_processes[0].pid) if platform.worker_processes else None
    available = available_memory()
    if not worker_bytes or available is None:
        return extra
    fitting = max(0, memory_fit(available, worker_bytes, platform.workers) - platform.workers)
    if fitting < extra:
        log.info(
            "memory: %.1f GiB available, %.1f GiB per worker: %d extra worker(s), not %d",
            available / 2**30,
            worker_bytes / 2**30,
            fitting,
            extra,
        )
    return min(extra, fitting)


def start_autoscaler(
    platform: LocalPlatform, redis_url: str, namespace: str, extra: int
) -> BackgroundAutoscaler | None:
    """Up to `extra` workers on demand next to the always-running ones, by the operator's scaling policy."""
    if extra < 1:
        log.info("autoscaling off: %d fixed worker(s)", platform.workers)
        return None
    from gorgon.core.redis.names import RedisNames  # noqa: PLC0415
    from gorgon_operator.local import run_local_autoscaler  # noqa: PLC0415
    from gorgon_operator.policy import ScalingPolicy  # noqa: PLC0415

    model = served_model(platform.url)
    policy = ScalingPolicy(min_replicas=0, max_replicas=extra)
    stop_event = threading.Event()

    def scale_forever() -> None:
        asyncio.run(
            run_local_autoscaler(
                platform.worker_cmd,
                redis_url,
                model,
                names=RedisNames(namespace),
                policy=policy,
                env=platform.env,
                stop=stop_event,
            )
        )

    thread = threading.Thread(target=scale_forever, name="local-autoscaler", daemon=True)
    thread.start()
    log.info("local autoscaler: up to %d extra worker(s) of %s by backlog", extra, model)
    return BackgroundAutoscaler(thread, stop_event)


def served_models_for_zero_workers(engine: str) -> dict[str, str]:
    """The API's environment for --workers 0: the model it serves before any worker started, as configured
    (GORGON_API_SERVED_MODELS), else the echo engine's; the real model's name and context length are only
    known once it is loaded, so for it the setting is required."""
    from gorgon.api.config import ApiSettings  # noqa: PLC0415

    if ApiSettings().served_models:
        return {}
    if engine == "echo":
        from gorgon.engine.echo import ECHO_CONTEXT_LENGTH, ECHO_MODEL_NAME  # noqa: PLC0415

        return {"GORGON_API_SERVED_MODELS": f"{ECHO_MODEL_NAME}:{ECHO_CONTEXT_LENGTH}"}
    raise ConfigurationError(
        "--workers 0 needs the model the API serves before a worker loads it: set GORGON_API_SERVED_MODELS "
        "to name:context_length (what /v1/models shows once a worker ran)"
    )


def run(args: argparse.Namespace) -> int:
    from gorgon.core.config import get_redis_settings  # noqa: PLC0415
    from gorgon.local.redis_server import start_private_redis  # noqa: PLC0415

    if args.workers < 0:
        raise ConfigurationError("--workers must not be negative")
    engine = args.engine or WorkerSettings().engine
    policy_max = policy_max_workers(args)
    plan = plan_workers(args, engine, policy_max)
    extra = max(0, plan.max_workers - args.workers) if policy_max is not None else 0
    api_env: dict[str, str] = {}
    if args.workers == 0:
        if extra < 1:
            raise ConfigurationError(
                "--workers 0 needs the local autoscaler to start workers: set --max-workers to 1 or more "
                "(and install the gorgon-operator package)"
            )
        api_env = served_models_for_zero_workers(engine)
    _check_port_free(args.port)
    redis_settings = get_redis_settings()
    embedded = None if redis_settings.url else start_private_redis()
    redis_url = redis_settings.url or embedded.url  # type: ignore[union-attr]
    threads_env = {"GORGON_ENGINE_THREADS": str(plan.threads)} if plan.threads else {}
    env = service_env(
        redis_url, redis_settings.namespace, {**api_env, **engine_environment(args), **threads_env}
    )
    platform = LocalPlatform(args.port, args.workers, worker_command(args.engine, args.echo_step_delay), env)
    stopping: list[bool] = []
    autoscaler: BackgroundAutoscaler | None = None

    def request_stop(signum: int, _: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stopping.append(True)

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        platform.start()
        platform.wait_ready(args.ready_timeout, stopping, redis_url, redis_settings.namespace)
        if not stopping:
            if plan.memory_capped:
                extra = memory_capped_extra(platform, extra)
            autoscaler = start_autoscaler(platform, redis_url, redis_settings.namespace, extra)
            sys.stdout.write(f"gorgon ready: {platform.url} (Redis {redis_url})\n")
            sys.stdout.flush()
            platform.supervise(stopping)
    finally:
        if autoscaler is not None:
            autoscaler.stop()
        platform.stop()
        if embedded is not None:
            embedded.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        log.info("stopped")
    return 0
