"""Prompt sets: JSONL files with one {"prompt": "..."} object a line. Named sets live in loadtest/prompts/;
any other path to such a file works too."""

from __future__ import annotations

import json
from pathlib import Path

from gorgon.core.errors import ConfigurationError

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_PROMPT_SET = "short"


def available_prompt_sets() -> list[str]:
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.jsonl"))


def resolve_prompt_set(name_or_path: str) -> Path:
    """A named set (`short`) or a path to a JSONL file."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    named = PROMPTS_DIR / f"{name_or_path}.jsonl"
    if named.is_file():
        return named
    known = ", ".join(available_prompt_sets()) or "none found"
    raise ConfigurationError(
        f"--prompts {name_or_path!r} is neither a file nor a named prompt set ({known})", param="prompts"
    )


def load_prompts(name_or_path: str) -> list[str]:
    """Every prompt of the set, in file order; blank lines are skipped."""
    path = resolve_prompt_set(name_or_path)
    prompts = [
        _prompt_from_line(line, path, number)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip()
    ]
    if not prompts:
        raise ConfigurationError(f"prompt set {path} holds no prompts", param="prompts")
    return prompts


def _prompt_from_line(line: str, path: Path, number: int) -> str:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path}:{number}: not JSON ({exc.msg})", param="prompts") from exc
    prompt = entry.get("prompt") if isinstance(entry, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        expected = '{"prompt": "<non-empty text>"}'
        raise ConfigurationError(f"{path}:{number}: expected {expected}", param="prompts")
    return prompt
