"""Fixtures of the chart tests: the chart rendered once with its defaults."""

from __future__ import annotations

import pytest
from chart_render import Manifest, render_chart


@pytest.fixture(scope="session")
def default_manifests() -> list[Manifest]:
    return render_chart()
