"""`gorgon bench engine`: its flags, their checks, and a command line that never loads torch."""

from __future__ import annotations

import json

import pytest

from gorgon.bench.engine import DEFAULT_BATCH_SIZES, DEFAULT_MAX_NEW_TOKENS, _batch_sizes
from gorgon.cli import main
from gorgon.core.errors import ConfigurationError


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
        "import sys, gorgon.engine, gorgon.bench.engine, gorgon.engine.config; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_building_the_command_line_does_not_import_torch_or_the_benchmarks_runs() -> None:
    """`gorgon --help` imports every command's module: none of them may load torch or a measuring module."""
    import subprocess
    import sys

    code = (
        "import sys, gorgon.cli; gorgon.cli.build_parser(); "
        "runs = [m for m in sys.modules if m.startswith('gorgon.bench.') and m.endswith('_run')]; "
        "print('torch' in sys.modules, runs)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False []"


def test_rounds_below_one_are_a_one_line_error(capsys) -> None:
    assert main(["bench", "engine", "--rounds", "0", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "gorgon: error: --rounds must be at least 1, got 0"


def _one_result_report():
    from gorgon.bench.engine_run import BenchResult, EngineReport

    result = BenchResult("medusa", 4, 50.0, 2.5, True, {"chain_4": 3, "plain": 1})
    return EngineReport("tiny", "cpu", "bfloat16", [result])


def test_json_report_keeps_the_keys_other_tools_read(monkeypatch, capsys) -> None:
    from gorgon.bench import engine_run

    monkeypatch.setattr(engine_run, "run_benchmark", lambda args, **_: _one_result_report())
    assert main(["bench", "engine", "--quick", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["model", "device", "dtype", "results"]
    assert (report["model"], report["device"], report["dtype"]) == ("tiny", "cpu", "bfloat16")
    assert report["results"] == [
        {
            "mode": "medusa",
            "batch": 4,
            "tokens_per_s": 50.0,
            "tokens_per_step": 2.5,
            "identical_to_plain": True,
            "shape_steps": {"chain_4": 3, "plain": 1},
        }
    ]
    assert list(report["results"][0]) == [
        "mode",
        "batch",
        "tokens_per_s",
        "tokens_per_step",
        "identical_to_plain",
        "shape_steps",
    ]


def test_table_shows_every_column(monkeypatch, capsys) -> None:
    from gorgon.bench import engine_run

    monkeypatch.setattr(engine_run, "run_benchmark", lambda args, **_: _one_result_report())
    assert main(["bench", "engine", "--quick"]) == 0
    table = capsys.readouterr().out
    assert "tiny on cpu (bfloat16)" in table
    for column in (
        "mode",
        "batch",
        "tokens/s",
        "tokens/step",
        "identical to plain",
        "× plain",
        "steps by shape",
    ):
        assert column in table
    assert "chain_4 75% · plain 25%" in table
