"""Where the Medusa heads for the served model lie: a local directory, a hub repository fetched into the hub cache
(the cache `from_pretrained` fills for the model, so the heads sit beside it), or nowhere (plain decoding)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from gorgon.core.errors import ConfigurationError
from gorgon.engine.config import EngineSettings


def heads_directory(settings: EngineSettings, *, fetch: bool = False) -> Path | None:
    """The local directory of the heads configured for the model, or None when it has none.

    Unset `heads_path`: the heads shipped for the default model when the model is the default one, else none
    (heads are trained on one base model's hidden states). A hub id is downloaded into the hub cache with `fetch`
    (once, at start, with huggingface_hub's progress bars) and looked up in that cache without it."""
    if settings.heads_path is None:
        return settings.default_model_heads_path if settings.model is None else None
    local = Path(settings.heads_path).expanduser()
    if local.exists() or not is_hub_id(settings.heads_path):
        return local
    return hub_snapshot(settings.heads_path, fetch=fetch)


def is_hub_id(text: str) -> bool:
    """`owner/name` as the hub spells it (a directory that exists by that name wins, see heads_directory)."""
    if text.startswith(("/", ".", "~")) or text.count("/") != 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def hub_snapshot(repo_id: str, *, fetch: bool) -> Path:
    """The snapshot of `repo_id` in the hub cache: downloaded first with `fetch`, else found there."""
    try:
        return Path(snapshot_download(repo_id, local_files_only=not fetch))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot fetch the Medusa heads {repo_id!r} from the hub into {constants.HF_HUB_CACHE}: {exc}"
        ) from exc
