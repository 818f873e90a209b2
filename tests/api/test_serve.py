from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.processes


@pytest.mark.parametrize("command", [["api"], ["worker", "--engine", "echo"]])
def test_services_without_redis_url_fail_with_one_line(command: list[str]) -> None:
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "GORGON_REDIS_URL"}}
    result = subprocess.run(
        [sys.executable, "-m", "gorgon.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gorgon: error: REDIS_URL is not set: point it at a Redis server (redis://host:6379/0)"
    ]
