"""Fixtures of the load generator's tests: a real SSE server on 127.0.0.1 (see loadtest_server.py), and the
whole gorgon stack on the echo engine (`gorgon up --engine echo` as a subprocess, as a user runs it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from loadtest_server import SseServer, serve_in_thread

from gorgon.local.processes import free_port

STACK_READY_TIMEOUT_S = 120.0
STACK_STOP_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def sse_server() -> Iterator[SseServer]:
    yield from serve_in_thread(SseServer(url=""))


@pytest.fixture(scope="module")
def baseline_sse_server() -> Iterator[SseServer]:
    yield from serve_in_thread(SseServer(url=""))


def _read_ready_line(process: subprocess.Popen[str], found: list[str]) -> None:
    if process.stdout is not None:
        found.append(process.stdout.readline())


@pytest.fixture(scope="module")
def echo_stack() -> Iterator[str]:
    """`gorgon up --engine echo` on a free port with its own embedded Redis; yields the API's base URL."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "GORGON_REDIS_URL"}}
    command = [sys.executable, "-m", "gorgon.cli", "up", "--engine", "echo", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        found: list[str] = []
        reader = threading.Thread(target=_read_ready_line, args=(process, found), daemon=True)
        reader.start()
        reader.join(STACK_READY_TIMEOUT_S)
        match = re.match(r"gorgon ready: (http://\S+)", found[0] if found else "")
        if match is None:
            pytest.fail(f"gorgon up printed no ready line within {STACK_READY_TIMEOUT_S:.0f} s: {found}")
        yield match.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STACK_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
