from __future__ import annotations

from pathlib import Path

import pytest

from gorgon.core.errors import ConfigurationError
from gorgon_loadtest.prompts import available_prompt_sets, load_prompts


def test_shipped_prompt_sets_load() -> None:
    assert {"short", "long"} <= set(available_prompt_sets())
    for name in available_prompt_sets():
        prompts = load_prompts(name)
        assert prompts
        assert all(prompt.strip() for prompt in prompts)


def test_a_prompt_file_path_is_read_in_order(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "one"}\n\n{"prompt": "two\\nlines"}\n', encoding="utf-8")
    assert load_prompts(str(path)) == ["one", "two\nlines"]


def test_unknown_set_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="short"):
        load_prompts("no-such-set")


@pytest.mark.parametrize(
    ("content", "message"), [("not json\n", ":1: not JSON"), ('{"text": "x"}\n', ":1: expected")]
)
def test_bad_lines_are_reported_with_their_number(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=message):
        load_prompts(str(path))


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="no prompts"):
        load_prompts(str(path))
