"""`gorgon up` as a user runs it: a subprocess that prints a ready line, serves, and stops cleanly on Ctrl-C;
and how many workers, with how many threads, it plans for this machine."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import redis

from gorgon.local import up
from gorgon.local.processes import free_port


def up_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gorgon.cli", "up", "--engine", "echo", "--port", str(port), *extra]


def env_without_redis() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "GORGON_REDIS_URL"}}


def _registered_workers(redis_url: str, *, expected: int, within_s: float) -> int:
    """Workers registered for the echo model, polled until `expected` or the time is up: the ready line waits
    for the first worker only (the others may still be starting; seen on a loaded 2-core machine)."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + within_s
    while (count := len(client.keys("gorgon:workers:echo:*"))) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


@pytest.mark.processes
def test_up_prints_ready_serves_and_stops_everything_on_ctrl_c() -> None:
    port = free_port()
    process = subprocess.Popen(
        up_command(port, "--workers", "2", "--max-workers", "2"),
        env=env_without_redis(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready_line = process.stdout.readline() if process.stdout else ""
        match = re.match(r"gorgon ready: (http://\S+) \(Redis (redis://\S+)\)", ready_line)
        assert match, ready_line
        url, redis_url = match.groups()
        assert url == f"http://127.0.0.1:{port}"
        reply = httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 3}, timeout=10)
        assert reply.json()["choices"][0]["text"] == "def"
        assert _registered_workers(redis_url, expected=2, within_s=15) == 2
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=40) == 0
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the API is still listening"
    host, redis_port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    with socket.socket() as sock:
        assert sock.connect_ex((host, int(redis_port))) != 0, "the embedded Redis is still running"


@pytest.mark.processes
def test_up_refuses_a_busy_port_with_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            up_command(port), env=env_without_redis(), capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"gorgon: error: port {port} is already in use; choose another with --port"
    )
    assert time.monotonic() - started < 30


@pytest.mark.processes
def test_up_adds_workers_under_backlog_through_the_local_autoscaler() -> None:
    port = free_port()
    command = up_command(port, "--workers", "1", "--max-workers", "2", "--echo-step-delay", "0.05")
    process = subprocess.Popen(command, env=env_without_redis(), stdout=subprocess.PIPE, text=True)
    try:
        ready_line = process.stdout.readline() if process.stdout else ""
        match = re.match(r"gorgon ready: (http://\S+) \(Redis (redis://\S+)\)", ready_line)
        assert match, ready_line
        url, redis_url = match.groups()
        client = redis.Redis.from_url(redis_url)
        body = {"prompt": "a", "max_tokens": 400, "stream": True, "use_speculative": False}
        with httpx.Client(timeout=30) as http, contextlib.ExitStack() as open_streams:
            for _ in range(10):  # ten running requests: a backlog of ten for one worker
                reply = open_streams.enter_context(http.stream("POST", f"{url}/v1/completions", json=body))
                assert reply.status_code == 200
            deadline = time.monotonic() + 30
            while len(client.keys("gorgon:workers:echo:*")) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(client.keys("gorgon:workers:echo:*")) == 2
        client.close()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


@pytest.mark.processes
def test_up_with_no_worker_wakes_one_for_the_first_request() -> None:
    port = free_port()
    command = up_command(port, "--workers", "0", "--max-workers", "1")
    process = subprocess.Popen(command, env=env_without_redis(), stdout=subprocess.PIPE, text=True)
    try:
        ready_line = process.stdout.readline() if process.stdout else ""
        match = re.match(r"gorgon ready: (http://\S+) \(Redis (redis://\S+)\)", ready_line)
        assert match, ready_line
        url, redis_url = match.groups()
        assert _registered_workers(redis_url, expected=1, within_s=0) == 0, "a worker ran before any request"
        started = time.monotonic()
        reply = httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 3}, timeout=60)
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == "def"
        assert time.monotonic() - started < 30
        assert _registered_workers(redis_url, expected=1, within_s=5) == 1
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


@pytest.mark.processes
def test_up_with_no_worker_needs_the_served_model_of_an_engine_it_cannot_name() -> None:
    env = {key: value for key, value in env_without_redis().items() if key != "GORGON_API_SERVED_MODELS"}
    command = [sys.executable, "-m", "gorgon.cli", "up", "--engine", "medusa", "--workers", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "GORGON_API_SERVED_MODELS" in result.stderr.strip().splitlines()[-1]


def up_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    up.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up, "usable_cores", lambda: 2)
    monkeypatch.delenv("GORGON_ENGINE_THREADS", raising=False)


@pytest.mark.usefixtures("two_cores")
def test_model_workers_are_sized_to_the_cores_by_default() -> None:
    plan = up.plan_workers(up_args(), "medusa", policy_max=4)
    assert plan == up.WorkerPlan(max_workers=1, threads=1, memory_capped=True)


@pytest.mark.usefixtures("two_cores")
def test_max_workers_and_the_thread_setting_override_the_sizing(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = up.plan_workers(up_args("--max-workers", "3"), "medusa", policy_max=4)
    assert plan == up.WorkerPlan(max_workers=3, threads=1, memory_capped=False)
    monkeypatch.setenv("GORGON_ENGINE_THREADS", "2")
    assert up.plan_workers(up_args(), "medusa", policy_max=4).threads is None  # the user's setting stays


@pytest.mark.usefixtures("two_cores")
def test_echo_workers_follow_the_scaling_policy_alone() -> None:
    assert up.plan_workers(up_args(), "echo", policy_max=4) == up.WorkerPlan(4, None, memory_capped=False)
    assert up.plan_workers(up_args("--workers", "2"), "echo", policy_max=None).max_workers == 2
