"""The flags of the engine benchmarks (`gorgon bench engine`, `gorgon bench step-cost`) and their checks."""

from __future__ import annotations

import argparse

from gorgon.core.errors import ConfigurationError


def positive_ints(text: str, flag: str) -> tuple[int, ...]:
    """'1, 4,16' -> (1, 4, 16); anything else is a one-line ConfigurationError naming `flag`."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigurationError(f"{flag} must be comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise ConfigurationError(f"{flag} must be positive integers, got {text!r}")
    return values


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model and --heads: what the benchmark loads."""
    parser.add_argument(
        "--model", default=None, help="HF dir, hub id or .gguf (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--heads",
        default=None,
        help="Medusa heads: a directory or a hub id (default: the engine's heads, the shipped ones for the default model)",
    )


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype and --no-deepspeed: where and how the model runs."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--no-deepspeed", action="store_true", help="run the bare HF model")
