from __future__ import annotations

import subprocess
import sys

import pytest

from gorgon.cli import main


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--num-prompts", "0"], "--num-prompts must be at least 1"),
        (["--epochs", "0"], "--epochs and --learning-rate must be positive"),
        (["--own-lm-heads"], "--train-vocab full"),
        (["--soft-target-weight", "1.5"], "--soft-target-weight must lie in [0, 1]"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train-heads", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gorgon: error:")
    assert message in error
    assert "\n" not in error


def test_a_malformed_cost_table_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train-heads", "--verify-cost", "1:40,eight"])
    assert exit_info.value.code == 2
    assert "tokens:ms pairs" in capsys.readouterr().err


@pytest.mark.processes
def test_the_command_module_imports_without_torch() -> None:
    probe = "import sys, gorgon.training.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
