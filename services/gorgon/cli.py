"""The `gorgon` command. Each subcommand lives in its own module exposing

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int

Command modules keep their top-level imports light (no torch) so `gorgon --help` stays fast; heavy imports go
inside `run`. A GorgonError raised by a command is printed as one line, exit status 2. Every option's help ends
with its default (`DefaultsNamedFormatter`), so a command module only words the defaults that need words.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from gorgon import __version__
from gorgon.core.errors import GorgonError
from gorgon.core.logs import configure_logging

# (command words, module, one-line help)
COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("up",), "gorgon.local.up", "run the whole platform locally: Redis, API, worker(s), autoscaler"),
    (("api",), "gorgon.api.serve", "run the API service"),
    (("worker",), "gorgon.worker.serve", "run one worker"),
    (("bench", "engine"), "gorgon.bench.engine", "benchmark HF generate vs plain vs Medusa decoding"),
    (
        ("bench", "step-cost"),
        "gorgon.bench.step_cost",
        "time one decoding step by tree size (for the tree search)",
    ),
    (
        ("bench", "gpu-check"),
        "gorgon.bench.gpu_check",
        "check a GPU: versions, load, engine bench, step cost and serving under load, as one JSON summary",
    ),
    (("bench", "platform"), "gorgon.bench.platform", "benchmark the API + queue overhead on the echo engine"),
    (
        ("bench", "peers"),
        "gorgon.bench.peers",
        "gorgon next to vLLM and llama.cpp: same model, prompts and client, one server at a time",
    ),
    (("bench", "telemetry"), "gorgon.bench.telemetry", "cost of the API's per-request metrics and spans"),
    (
        ("bench", "features"),
        "gorgon.bench.features",
        "tokens/s of each request feature (logprobs, penalties, logit_bias, JSON output, n), speculation off and on",
    ),
    (("train-heads",), "gorgon.training.cli", "train Medusa heads by self-distillation"),
    (
        ("autoscale", "simulate"),
        "gorgon_operator.simulate",
        "replay a backlog trace through the scaling policy",
    ),
    (("operator",), "gorgon_operator.cli", "run the kopf operator"),
    (("loadtest",), "gorgon_loadtest.cli", "drive the OpenAI endpoints with load and write reports"),
)

DESCRIPTION = (
    "gorgon serves LLMs behind an OpenAI-compatible API, with Medusa speculative decoding and continuous "
    "batching, on this machine (`gorgon up`) or on Kubernetes; these commands run its services, benchmark them "
    "and train its Medusa heads."
)

log = logging.getLogger("gorgon")


class DefaultsNamedFormatter(argparse.HelpFormatter):
    """Appends `(default: …)` to every option's help that does not word its default itself (an option without
    help gets just that); flags and required options have none to name, and a default of None reads `none`."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and has_default_to_name(action):
            action = copy.copy(action)
            action.help = default_clause(action.default)
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if not has_default_to_name(action) or "default" in help_text.lower():
            return help_text
        return f"{help_text} {default_clause(action.default)}"


def default_clause(default: object) -> str:
    """`(default: …)`, escaped for argparse's %-formatting of help texts."""
    return f"(default: {default_text(default)})".replace("%", "%%")


def has_default_to_name(action: argparse.Action) -> bool:
    """False for help and version, flags (no value: off unless given) and required options."""
    return bool(action.option_strings) and action.nargs != 0 and not action.required


def default_text(default: object) -> str:
    """A default as one would type it: sequences comma-separated, pairs inside them colon-separated."""
    if default is None:
        return "none"
    if isinstance(default, list | tuple):
        return (
            ",".join(":".join(map(str, item)) if isinstance(item, tuple) else str(item) for item in default)
            or "none"
        )
    return str(default)


def as_sentence(help_text: str) -> str:
    return f"{help_text[:1].upper()}{help_text[1:]}."


def _command_parser(
    groups: dict[tuple[str, ...], argparse._SubParsersAction], words: tuple[str, ...], help_text: str
) -> argparse.ArgumentParser:
    parent = groups[words[:-1]]
    return parent.add_parser(
        words[-1], help=help_text, description=as_sentence(help_text), formatter_class=DefaultsNamedFormatter
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gorgon", description=DESCRIPTION, formatter_class=DefaultsNamedFormatter
    )
    parser.add_argument("--version", action="version", version=f"gorgon {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ... (default: INFO)")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): parser.add_subparsers(dest="command")}
    for words, module_name, help_text in COMMANDS:
        for depth in range(1, len(words)):
            prefix = words[:depth]
            if prefix not in groups:
                group_parser = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=f"{prefix[-1]} commands", formatter_class=DefaultsNamedFormatter
                )
                groups[prefix] = group_parser.add_subparsers(dest=f"command_{depth}")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            log.debug("command %s unavailable: %s", " ".join(words), exc)
            continue
        sub = _command_parser(groups, words, help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _settings_errors(exc: ValidationError) -> str:
    """Settings errors on one line: which setting, what is wrong (never its value: it may be a secret)."""
    return "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except GorgonError as exc:
        sys.stderr.write(f"gorgon: error: {exc}\n")
        return 2
    except ValidationError as exc:
        sys.stderr.write(f"gorgon: error: invalid settings: {_settings_errors(exc)}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
