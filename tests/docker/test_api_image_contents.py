"""What the slim API/operator image holds: the wheel built from the Docker build context alone, and an API
(and operator) that start without torch — the image installs no `worker` extra."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_dockerfiles import REPO_ROOT, excluded_from_context

pytestmark = pytest.mark.processes

# Modules of the worker extra: none may be imported by the API or the operator.
WORKER_ONLY_MODULES = ("torch", "transformers", "deepspeed", "accelerate", "gguf", "safetensors")

BLOCK_WORKER_MODULES = f"""
import importlib.abc, sys

class _NotInThisImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {WORKER_ONLY_MODULES!r}:
            raise ImportError(f"{{name}} is not installed in the slim image")
        return None
sys.meta_path.insert(0, _NotInThisImage())
"""


def _copy_build_context(into: Path) -> None:
    """Copy what `docker build` would send; top-level directories the .dockerignore drops are not walked."""
    for top in REPO_ROOT.iterdir():
        if top.is_dir() and excluded_from_context(top.name):
            continue
        for path in [top] if top.is_file() else top.rglob("*"):
            relative = path.relative_to(REPO_ROOT)
            if path.is_file() and not excluded_from_context(str(relative)):
                target = into / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


@pytest.fixture(scope="module")
def gorgon_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    context = tmp_path_factory.mktemp("context")
    _copy_build_context(context)
    out = tmp_path_factory.mktemp("wheels")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(out),
    ]
    result = subprocess.run([*command, str(context)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return next(out.glob("gorgon-*.whl"))


def test_build_context_holds_only_what_the_images_need() -> None:
    assert not excluded_from_context("services/gorgon/api/app.py")
    assert excluded_from_context("tests/conftest.py")
    assert excluded_from_context("charts/gorgon/values.yaml")


def test_wheel_from_the_build_context_has_every_command_module(gorgon_wheel: Path) -> None:
    from gorgon.cli import COMMANDS

    names = set(zipfile.ZipFile(gorgon_wheel).namelist())
    for _, module, _ in COMMANDS:
        module_file = f"{module.replace('.', '/')}.py"
        source_roots = ("services", "operator", "loadtest")
        if any((REPO_ROOT / root / module_file).exists() for root in source_roots):
            assert module_file in names, module
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "gorgon = gorgon.cli:main" in zipfile.ZipFile(gorgon_wheel).read(entry_points).decode()


def test_wheel_carries_the_package_data(gorgon_wheel: Path) -> None:
    names = zipfile.ZipFile(gorgon_wheel).namelist()
    tracked_data = [
        p.relative_to(REPO_ROOT / "services").as_posix()
        for p in (REPO_ROOT / "services" / "gorgon").rglob("*.json")
        if "__pycache__" not in p.parts
    ]
    assert tracked_data
    assert set(tracked_data) <= set(names)


@pytest.mark.parametrize(
    "probe",
    [
        "from gorgon.api.app import create_app; create_app()",
        "from gorgon.cli import build_parser; build_parser().parse_args(['api'])",
        "from gorgon.cli import build_parser; build_parser().parse_args(['operator'])",
        "import gorgon_operator.handlers",
    ],
)
def test_api_and_operator_start_without_the_worker_extra(probe: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_WORKER_MODULES + probe], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
