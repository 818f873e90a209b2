"""`gorgon bench gpu-check`'s flags: the issue's GPU figures by default, and bad values refused before any
phase starts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gorgon.bench import gpu_check
from gorgon.core.errors import ConfigurationError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gpu_check.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_defaults_are_the_figures_for_a_7b_model_on_one_gpu() -> None:
    config = gpu_check.config_from_args(parse("--out", "unused"))
    assert config.batch_sizes == (1, 4, 16) and config.medusa_choices == "mc_sim_7b_63"
    assert config.nodes == (1, 4, 16, 64) and config.contexts == (256, 1900)
    assert (config.concurrency, config.prompt_tokens, config.max_tokens) == (48, 1500, 128)
    assert config.budget_s == 600 and config.deepspeed and not config.engine_bench_quick


def test_a_cpu_run_scales_every_figure_down() -> None:
    argv = "--device cpu --concurrency 4 --prompt-tokens 64 --max-tokens 8 --batch-sizes 1,4 --nodes 1,4"
    config = gpu_check.config_from_args(parse(*argv.split(), "--contexts", "64,128", "--no-deepspeed"))
    assert config.device == "cpu" and not config.deepspeed
    assert (config.concurrency, config.prompt_tokens, config.max_tokens) == (4, 64, 8)
    assert (config.batch_sizes, config.nodes, config.contexts) == ((1, 4), (1, 4), (64, 128))


def test_without_out_a_new_directory_holds_the_files() -> None:
    out = gpu_check.config_from_args(parse()).out
    assert out.is_dir() and not any(out.iterdir())
    out.rmdir()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--nodes", "0,4"], "--nodes"),
        (["--contexts", "256,abc"], "--contexts"),
        (["--batch-sizes", ""], "--batch-sizes"),
        (["--concurrency", "0"], "--concurrency"),
        (["--prompt-tokens", "-1"], "--prompt-tokens"),
        (["--step-cost-rounds", "0"], "--step-cost-rounds"),
        (["--budget", "0"], "--budget"),
    ],
)
def test_bad_values_are_a_clear_error(argv: list[str], flag: str) -> None:
    with pytest.raises(ConfigurationError, match=flag):
        gpu_check.config_from_args(parse(*argv, "--out", str(Path("unused"))))
