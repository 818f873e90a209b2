"""The repository speaks of the product only: no tracked text tells the circumstances of its writing.

A comment says why the code is as it is; figures live in docs/benchmarks.md with the command that measures them;
history lives in git. So tracked files carry no numbered working sessions, no references to throwaway scripts,
no notes about where something was or was not run, and code comments, docstrings and docs carry no dates of runs.
"""

from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Spelled with character classes so that this file does not itself contain the phrases it forbids.
CIRCUMSTANCE_WORDS = re.compile(
    r"\bsessio[n] \d+|\b(?:this|last|next|previous) sessio[n]\b|/tm[p] scrip[t]|\bscratc[h] scrip[t]|"
    r"\bnot ru[n] here\b|\buntested her[e]\b|\bnot measured her[e]\b",
    re.IGNORECASE,
)


def _phrase(*words: str) -> str:
    """A sample sentence assembled at run time, for the same reason."""
    return " ".join(words)


DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".json", ".tpl", ".lua", ".cfg"}
TEXT_NAMES = {"Makefile", "Dockerfile.api", "Dockerfile.worker", "run", ".gitignore", ".dockerignore"}
# Prompt and training data the product ships: other people's text, not ours.
DATA_DIRS = ("models/", "loadtest/prompts/", "services/gorgon/training/prompts/")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [
        ROOT / name
        for name in listed
        if name != THIS_FILE
        and not name.startswith(DATA_DIRS)
        and (Path(name).suffix in TEXT_SUFFIXES or Path(name).name in TEXT_NAMES)
        and (ROOT / name).is_file()
    ]


def python_prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring-like string (triple-quoted) in a Python file."""
    prose = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        is_docstring = token.type == tokenize.STRING and token.string.lstrip("rbuRBU").startswith(
            ('"""', "'''")
        )
        if token.type == tokenize.COMMENT or is_docstring:
            prose.append((token.start[0], token.string))
    return prose


def circumstance_findings(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    name = path.relative_to(ROOT).as_posix()
    findings = [
        f"{name}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)!r}"
        for match in CIRCUMSTANCE_WORDS.finditer(text)
    ]
    if path.suffix == ".py":
        dated = [(line, prose) for line, prose in python_prose(text) if DATE.search(prose)]
        findings += [f"{name}:{line}: a date in a comment or docstring" for line, _ in dated]
    elif path.suffix == ".md":
        findings += [
            f"{name}:{text.count(chr(10), 0, match.start()) + 1}: date {match.group(0)}"
            for match in DATE.finditer(text)
        ]
    return findings


def test_tracked_files_are_listed() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in tracked_text_files()}
    assert {"README.md", "pyproject.toml", "Makefile", "services/gorgon/cli.py"} <= names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_phrase("measured in", "session", "12", "on a Zen 4"), True),
        (_phrase("a", "/tmp", "script", "alternated both"), True),
        (_phrase("the GPU path,", "not", "run", "here"), True),
        ("the session's token", False),
        ("a sessionless client", False),
    ],
)
def test_circumstance_words_pattern(text: str, expected: bool) -> None:
    assert bool(CIRCUMSTANCE_WORDS.search(text)) is expected


def test_python_prose_finds_comments_and_docstrings_not_literals() -> None:
    source = (
        'def f():\n    """Run of 2026-12-01."""\n    # see 2026-12-02\n    return "2026-01-01T00:00:00Z"\n'
    )
    dated = [line for line, prose in python_prose(source) if DATE.search(prose)]
    assert dated == [2, 3]


def test_no_text_speaks_of_its_circumstances() -> None:
    findings = [finding for path in tracked_text_files() for finding in circumstance_findings(path)]
    assert not findings, "\n".join(findings)


DOC_SECTION_REFERENCE = re.compile(r'(docs/[\w-]+\.md), "([^"]+)"')


def test_code_that_points_to_a_doc_section_names_one_that_exists() -> None:
    missing = []
    for path in tracked_text_files():
        if path.suffix != ".py":
            continue
        for doc, heading in DOC_SECTION_REFERENCE.findall(path.read_text(encoding="utf-8")):
            headings = {
                line.lstrip("#").strip()
                for line in (ROOT / doc).read_text(encoding="utf-8").splitlines()
                if line.startswith("#")
            }
            if heading not in headings:
                missing.append(f"{path.relative_to(ROOT)}: {doc} has no section {heading!r}")
    assert not missing, "\n".join(missing)
