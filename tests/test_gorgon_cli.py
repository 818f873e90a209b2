from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from gorgon.cli import build_parser, default_text, has_default_to_name, main
from gorgon.engine.config import EngineSettings
from gorgon.worker.serve import engine_environment


def test_version_flag_prints_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "gorgon 0.1.0" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: gorgon" in capsys.readouterr().err


def subcommand_parsers(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the `gorgon` command tree, by its command words."""
    yield " ".join(("gorgon", *words)), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommand_parsers(sub, (*words, name))


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's lines in the command's --help."""
    return str(parser._get_formatter()._format_action(action))


def test_the_description_reads_as_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    description = " ".join(capsys.readouterr().out.split("\n\n")[1].split())
    assert description[0].isalpha() and description.endswith(".")
    assert description.startswith("gorgon serves") and description.count(".") == 1


def test_every_option_of_every_command_names_its_default() -> None:
    commands = dict(subcommand_parsers(build_parser()))
    for words in ("gorgon up", "gorgon worker", "gorgon api", "gorgon loadtest", "gorgon train-heads"):
        assert words in commands
    assert any(words.startswith("gorgon bench ") for words in commands)
    unnamed = []
    for words, parser in commands.items():
        for action in parser._actions:
            if has_default_to_name(action) and "default" not in option_help(parser, action):
                unnamed.append(f"{words} {action.option_strings[0]}")
    assert unnamed == []


def test_a_flag_or_required_option_has_no_default_to_name() -> None:
    parser = argparse.ArgumentParser()
    flag = parser.add_argument("--fast", action="store_true")
    required = parser.add_argument("--url", required=True)
    valued = parser.add_argument("--count", type=int, default=3)
    assert not has_default_to_name(flag) and not has_default_to_name(required)
    assert has_default_to_name(valued)


@pytest.mark.parametrize(
    ("default", "text"),
    [
        (None, "none"),
        (3, "3"),
        ((1, 4, 16), "1,4,16"),
        (((1, 68.5), (2, 82.2)), "1:68.5,2:82.2"),
        ((), "none"),
    ],
)
def test_defaults_are_written_as_one_would_type_them(default: object, text: str) -> None:
    assert default_text(default) == text


def test_up_and_worker_take_the_model_and_heads_as_the_engine_settings_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands = dict(subcommand_parsers(build_parser()))
    for words in ("gorgon up", "gorgon worker"):
        args = commands[words].parse_args(["--model", "/models/vicuna", "--heads", "/models/vicuna-heads"])
        environment = engine_environment(args)
        assert environment == {
            "GORGON_ENGINE_MODEL": "/models/vicuna",
            "GORGON_ENGINE_HEADS_PATH": "/models/vicuna-heads",
        }
        assert engine_environment(commands[words].parse_args([])) == {}
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        settings = EngineSettings()
        assert (settings.model, str(settings.heads_path)) == ("/models/vicuna", "/models/vicuna-heads")
        monkeypatch.delenv("GORGON_ENGINE_MODEL")
        monkeypatch.delenv("GORGON_ENGINE_HEADS_PATH")
    worker_help = " ".join(commands["gorgon worker"].format_help().split())
    assert "(default: GORGON_ENGINE_MODEL, else SmolLM2-135M-Instruct" in worker_help
    assert "(default: GORGON_ENGINE_HEADS_PATH, else with the default model," in worker_help
