"""`gorgon bench engine` argument handling (the measuring run itself needs the real model: see docs)."""

from __future__ import annotations

import pytest

from gorgon.cli import main
from gorgon.core.errors import ConfigurationError
from gorgon.engine.bench import DEFAULT_BATCH_SIZES, DEFAULT_MAX_NEW_TOKENS, _batch_sizes


def test_defaults_match_the_issue() -> None:
    assert DEFAULT_MAX_NEW_TOKENS == 128
    assert DEFAULT_BATCH_SIZES == (1, 4, 16)


def test_batch_sizes_parse() -> None:
    assert _batch_sizes("1, 4,16") == (1, 4, 16)
    with pytest.raises(ConfigurationError, match="comma-separated integers"):
        _batch_sizes("1,four")
    with pytest.raises(ConfigurationError, match="positive"):
        _batch_sizes("0")


def test_bad_flag_is_one_line_error(capsys) -> None:
    assert main(["bench", "engine", "--batch-sizes", "x", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().startswith("gorgon: error: --batch-sizes")
    assert len(captured.err.strip().splitlines()) == 1


def test_engine_package_and_bench_command_import_without_torch() -> None:
    """The API image has no torch: `import gorgon.engine` and `gorgon --help` must not need it."""
    import subprocess
    import sys

    code = (
        "import sys, gorgon.engine, gorgon.engine.bench, gorgon.engine.config; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
