"""The local actuator for `gorgon up`: the same scaling policy, acting on worker processes on this machine.

    await run_local_autoscaler(["gorgon", "worker", "--engine", "echo"], redis_url, "echo", stop=stop_event)

Every poll it measures the model's backlog (XLEN of its request stream) and the workers (alive processes;
ready = registered in Redis), asks the policy, and starts or stops processes. Stopping is SIGTERM — the worker
drains its running batch and hands back the rest — and SIGKILL only if it outlives `kill_after_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.queue import backlog
from gorgon.core.redis.registry import live_workers
from gorgon_operator.policy import Decision, Observation, ScalingPolicy, WindowState, decide

log = logging.getLogger(__name__)

LOCAL_POLL_INTERVAL_S = 2.0
KILL_AFTER_S = 30.0  # longer than the worker's own shutdown grace (GORGON_WORKER_SHUTDOWN_GRACE_S)
STOP_CHECK_S = 0.1

StopSignal = asyncio.Event | threading.Event


@dataclass
class _Stopping:
    process: asyncio.subprocess.Process
    kill_at: float


@dataclass
class LocalWorkers:
    """Worker processes started from one command line; the newest are stopped first."""

    command: Sequence[str]
    env: Mapping[str, str] | None = None
    kill_after_s: float = KILL_AFTER_S
    active: list[asyncio.subprocess.Process] = field(default_factory=list)
    stopping: list[_Stopping] = field(default_factory=list)

    async def scale_to(self, count: int) -> None:
        while len(self.active) < count:
            process = await asyncio.create_subprocess_exec(*self.command, env=self.env)
            log.info("started worker pid %d", process.pid)
            self.active.append(process)
        while len(self.active) > count:
            self._terminate(self.active.pop())

    def reap(self) -> None:
        """Forget exited processes; SIGKILL those that outlived their grace period."""
        for process in [p for p in self.active if p.returncode is not None]:
            log.warning("worker pid %d exited with %s", process.pid, process.returncode)
            self.active.remove(process)
        now = time.monotonic()
        for entry in list(self.stopping):
            if entry.process.returncode is not None:
                self.stopping.remove(entry)
            elif now >= entry.kill_at:
                log.warning(
                    "worker pid %d ignored SIGTERM for %.0f s; killing it",
                    entry.process.pid,
                    self.kill_after_s,
                )
                entry.process.kill()

    async def stop_all(self) -> None:
        while self.active:
            self._terminate(self.active.pop())
        for entry in self.stopping:
            try:
                await asyncio.wait_for(entry.process.wait(), max(0.0, entry.kill_at - time.monotonic()))
            except TimeoutError:
                entry.process.kill()
                await entry.process.wait()
        self.stopping.clear()

    def _terminate(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            log.info("stopping worker pid %d (SIGTERM: it drains first)", process.pid)
            process.send_signal(signal.SIGTERM)
            self.stopping.append(_Stopping(process, time.monotonic() + self.kill_after_s))


async def run_local_autoscaler(
    worker_command: Sequence[str],
    redis_url: str,
    model: str,
    *,
    names: RedisNames | None = None,
    policy: ScalingPolicy | None = None,
    poll_interval_s: float = LOCAL_POLL_INTERVAL_S,
    env: Mapping[str, str] | None = None,
    stop: StopSignal | None = None,
) -> None:
    """Scale worker processes of `model` on its backlog until `stop` is set (or the task is cancelled), then
    stop every worker. `names` defaults to the `gorgon` namespace; `env` to this process's environment."""
    redis = AsyncRedis.from_url(redis_url)
    scaler = LocalAutoscaler(
        redis, names or RedisNames(), model, policy or ScalingPolicy(), LocalWorkers(worker_command, env)
    )
    try:
        while not _is_set(stop):
            await scaler.poll_once()
            await _sleep_unless_stopped(stop, poll_interval_s)
    finally:
        await scaler.workers.stop_all()
        await redis.aclose()


@dataclass
class LocalAutoscaler:
    """The policy's loop state for one model's local workers."""

    redis: AsyncRedis
    names: RedisNames
    model: str
    policy: ScalingPolicy
    workers: LocalWorkers
    state: WindowState = field(default_factory=WindowState)

    async def poll_once(self) -> Decision | None:
        """Measure, decide, start/stop processes; None when Redis could not be read (nothing changes)."""
        self.workers.reap()
        try:
            queued = await backlog(self.redis, self.names, self.model)
            registered = len(await live_workers(self.redis, self.names, self.model))
        except RedisError as exc:
            log.warning("cannot measure the backlog of %s: %s", self.model, exc)
            return None
        current = len(self.workers.active)
        ready = min(current, max(0, registered - len(self.workers.stopping)))
        decision = decide(self.policy, self.state, Observation(time.monotonic(), queued, current, ready))
        self.state = decision.state
        if decision.desired != current:
            log.info(
                "%s: %d → %d workers (%s): %s",
                self.model,
                current,
                decision.desired,
                decision.reason,
                decision.message,
            )
            await self.workers.scale_to(decision.desired)
        return decision


def _is_set(stop: StopSignal | None) -> bool:
    return stop is not None and stop.is_set()


async def _sleep_unless_stopped(stop: StopSignal | None, seconds: float) -> None:
    if isinstance(stop, asyncio.Event):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return
    deadline = time.monotonic() + seconds
    while not _is_set(stop) and time.monotonic() < deadline:
        await asyncio.sleep(min(STOP_CHECK_S, deadline - time.monotonic()))
