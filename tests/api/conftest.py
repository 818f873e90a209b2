"""A real platform for the API tests: an echo worker and an API process on the session's private Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gorgon.local.processes import LocalServices
from gorgon_testing import services_in_fresh_namespace

ECHO_STEP_DELAY_S = 0.005


@pytest.fixture(scope="module")
def services(redis_url: str) -> Iterator[LocalServices]:
    with services_in_fresh_namespace(redis_url, {"GORGON_WORKER_READ_BLOCK_MS": "20"}) as running:
        running.start_worker("echo", ECHO_STEP_DELAY_S)
        yield running


@pytest.fixture(scope="module")
def api(services: LocalServices) -> str:
    """Base URL of an API process with default settings."""
    return services.start_api()
