"""Starting gorgon's services as local processes (for `gorgon up`, `gorgon bench platform` and the tests)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import redis

from gorgon.core.redis.names import RedisNames

log = logging.getLogger(__name__)

STOP_GRACE_S = 25.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(redis_url: str, namespace: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child service: this one, plus where Redis is and which namespace to use."""
    return {**os.environ, "REDIS_URL": redis_url, "GORGON_REDIS_NAMESPACE": namespace, **(extra or {})}


def worker_command(
    engine: str | None = None, echo_step_delay: float | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """The command line of one worker process (its probe endpoint on a free port, so many can run)."""
    command = [sys.executable, "-m", "gorgon.cli", "worker", "--http-port", "0"]
    if engine:
        command += ["--engine", engine]
    if echo_step_delay is not None:
        command += ["--echo-step-delay", str(echo_step_delay)]
    return command + list(extra)


def api_command(port: int) -> list[str]:
    return [sys.executable, "-m", "gorgon.cli", "api", "--host", "127.0.0.1", "--port", str(port)]


def spawn(command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(list(command), env=dict(env))
    log.debug("started pid %d: %s", process.pid, " ".join(command))
    return process


def wait_until_ready(url: str, timeout_s: float, alive: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `{url}/ready` until it answers 200; raises TimeoutError (or RuntimeError if `alive` exits)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"pid {alive.pid} exited with status {alive.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}/ready did not answer 200 within {timeout_s:.0f} s")


def registered_workers(redis_url: str, namespace: str) -> int:
    """Workers whose registration under `namespace` is live (the registry's index, read without pruning it)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.smembers(RedisNames(namespace).worker_index()))
        return sum(value is not None for value in client.mget(keys)) if keys else 0
    finally:
        client.close()


def stop_all(processes: Sequence[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every process, wait up to `grace_s` in total, SIGKILL the rest."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop in time; killing it", process.pid)
            process.kill()
            process.wait()


@dataclass
class LocalServices:
    """API and worker processes on one Redis namespace, started and stopped together."""

    redis_url: str
    namespace: str
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return service_env(self.redis_url, self.namespace, self.extra_env)

    def start_worker(
        self, engine: str | None = None, echo_step_delay: float | None = None, **settings: str
    ) -> subprocess.Popen[bytes]:
        """A worker process with GORGON_WORKER_<NAME> settings."""
        extra = {f"GORGON_WORKER_{name.upper()}": value for name, value in settings.items()}
        process = spawn(worker_command(engine, echo_step_delay), {**self.env, **extra})
        self.processes.append(process)
        self.workers.append(process)
        return process

    def start_api(self, ready_timeout_s: float = 60.0, **settings: str) -> str:
        """An API process with GORGON_API_<NAME> settings; returns its base URL once /ready answers 200 and
        the workers started so far that still run are registered (the API takes requests with no worker up,
        but they would wait for one)."""
        deadline = time.monotonic() + ready_timeout_s
        port = free_port()
        extra = {f"GORGON_API_{name.upper()}": value for name, value in settings.items()}
        process = spawn(api_command(port), {**self.env, **extra})
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, ready_timeout_s, alive=process)
        self.wait_for_workers(max(0.0, deadline - time.monotonic()))
        return url

    def wait_for_workers(self, timeout_s: float) -> None:
        """Until the started workers that still run are registered; TimeoutError past `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while registered_workers(self.redis_url, self.namespace) < self._running_workers():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not register within {timeout_s:.0f} s")
            time.sleep(0.1)

    def _running_workers(self) -> int:
        return sum(process.poll() is None for process in self.workers)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_all(self.processes, grace_s)
        self.processes.clear()
        self.workers.clear()
