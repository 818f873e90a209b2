"""The README's configuration table, generated from the pydantic-settings classes (their fields are the one
source of truth for every default): `python -m gorgon.local.settings_table` prints it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

REPO_ROOT = Path(__file__).resolve().parents[3]

# (section title, module, class name): every settings class of the services.
SETTINGS_CLASSES: tuple[tuple[str, str, str], ...] = (
    ("Redis (every service)", "gorgon.core.config", "RedisSettings"),
    ("API (`gorgon api`)", "gorgon.api.config", "ApiSettings"),
    ("Worker (`gorgon worker`)", "gorgon.worker.config", "WorkerSettings"),
    ("Engine (in the worker)", "gorgon.engine.config", "EngineSettings"),
)


def env_names(settings_class: type[BaseSettings], name: str, field: FieldInfo) -> list[str]:
    """The environment variables that set `field`: its aliases, else the class's prefix + the field name."""
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return [str(choice) for choice in choices]
    if isinstance(alias, str):
        return [alias]
    prefix = settings_class.model_config.get("env_prefix", "")
    return [f"{prefix}{name}".upper()]


def default_text(field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if isinstance(value, Path):
        if value.is_relative_to(REPO_ROOT):
            return str(value.relative_to(REPO_ROOT))
        return f"~/{value.relative_to(Path.home())}" if value.is_relative_to(Path.home()) else str(value)
    if value is None:
        return "unset"
    if isinstance(value, list):
        return "empty" if not value else ", ".join(map(str, value))
    if isinstance(value, dict):
        return "empty" if not value else ", ".join(f"{key}:{item}" for key, item in value.items())
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def setting_default(settings_class: type[BaseSettings], name: str, unset: str | None = None) -> str:
    """A command-line option's default when the option falls back to a setting: "GORGON_X, else <its default>"
    (`unset` words what an unset setting means)."""
    field = settings_class.model_fields[name]
    fallback = default_text(field)
    return f"{env_names(settings_class, name, field)[0]}, else {unset if unset and fallback == 'unset' else fallback}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_rows(settings_class: type[BaseSettings]) -> list[str]:
    rows = []
    for name, field in settings_class.model_fields.items():
        names = " or ".join(f"`{env}`" for env in env_names(settings_class, name, field))
        rows.append(f"| {names} | `{_cell(default_text(field))}` | {_cell(field.description or '')} |")
    return rows


def settings_markdown() -> str:
    """One table per settings class, in SETTINGS_CLASSES order."""
    parts = []
    for title, module_name, class_name in SETTINGS_CLASSES:
        settings_class = getattr(importlib.import_module(module_name), class_name)
        parts += [f"**{title}**", "", "| variable | default | meaning |", "|---|---|---|"]
        parts += settings_rows(settings_class)
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(settings_markdown())
