"""Fixtures of the fault suite: a Redis server of the test's own, which the test may stop and restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reliability_harness import RestartableRedis, platform_on

from gorgon.local.processes import LocalServices, free_port


@pytest.fixture
def own_redis() -> Iterator[RestartableRedis]:
    server = RestartableRedis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def echo_services(redis_url: str) -> Iterator[LocalServices]:
    """An echo worker (no step delay) on the session's Redis under a namespace of its own, shared by the tests
    that send single requests (process start-up dominates this suite's time on a loaded machine)."""
    with platform_on(redis_url, GORGON_WORKER_READ_BLOCK_MS="20") as services:
        services.start_worker("echo", 0.0)
        yield services


@pytest.fixture(scope="session")
def echo_api(echo_services: LocalServices) -> str:
    """Base URL of an API process with default settings in front of `echo_services`."""
    return echo_services.start_api()
