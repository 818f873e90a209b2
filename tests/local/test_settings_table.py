from __future__ import annotations

from pathlib import Path

import pytest

from gorgon.api.config import ApiSettings
from gorgon.core.config import RedisSettings
from gorgon.local.settings_table import REPO_ROOT, settings_markdown, settings_rows
from gorgon.worker.config import WorkerSettings

README = Path(REPO_ROOT / "README.md")


@pytest.mark.parametrize("settings_class", [RedisSettings, ApiSettings, WorkerSettings])
def test_readme_lists_every_serving_setting_with_its_current_default(settings_class: type) -> None:
    readme = README.read_text()
    missing = [row for row in settings_rows(settings_class) if row not in readme]
    assert not missing, (
        "README is stale; regenerate with `python -m gorgon.local.settings_table`:\n" + "\n".join(missing)
    )


def test_table_names_env_variables_and_defaults() -> None:
    table = settings_markdown()
    assert "| `REDIS_URL` or `GORGON_REDIS_URL` | `unset` |" in table
    assert "| `GORGON_API_PORT` | `8000` |" in table
    assert "| `GORGON_WORKER_HTTP_PORT` | `8001` |" in table
