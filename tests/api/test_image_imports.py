"""The API image installs no torch: nothing the API process imports may pull it in."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.processes


def test_the_api_and_core_modules_import_without_torch_or_transformers() -> None:
    probe = (
        "import importlib, pkgutil, sys, gorgon.api.app, gorgon.api.serve, gorgon.core.protocol, gorgon.core.redis; "
        "[importlib.import_module(module.name) for module in "
        "pkgutil.iter_modules(gorgon.core.redis.__path__, 'gorgon.core.redis.')]; "
        "print(sorted(name for name in ('torch', 'transformers', 'deepspeed') if name in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
