"""The Medusa heads' checkpoint format (FasterDecoding/Medusa layout) and the files trained heads ship beside it.

On disk (a directory): `config.json` with `medusa_num_heads`, `medusa_num_layers`, `base_model_name_or_path`
(and, written by us, `medusa_own_lm_heads` and `medusa_recurrent`), plus `medusa_lm_head.safetensors` or
`medusa_lm_head.pt` holding `{head}.{layer}.linear.weight|bias` and, with own projections,
`{head}.{num_layers}.weight`. The head count is taken from the weights (the released medusa-vicuna-7b-v1.3 config
says 2, the file holds 5), and loading is strict: a missing or unexpected key is an error, never silently
untrained heads.

Heads trained here also ship a tree tuned for them (`medusa_choices.json`, read by engine/shapes.py) and their
draft vocabulary (`draft_vocab.json`: the tokens they draft, most frequent first).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gorgon.core.errors import ConfigurationError
from gorgon.engine.config import EngineSettings
from gorgon.engine.drafting.heads import DraftVocabulary, MedusaHeads
from gorgon.engine.drafting.source import heads_directory
from gorgon.engine.loader import LoadedModel

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "medusa_lm_head.safetensors"
PICKLE_FILE = "medusa_lm_head.pt"
HEADS_TREE_FILE = "medusa_choices.json"  # a tree tuned for the heads, written beside them
DRAFT_VOCABULARY_FILE = (
    "draft_vocab.json"  # the heads' draft tokens, most frequent first, written beside them
)
_KEY_PATTERN = re.compile(r"^(\d+)\.(\d+)\.")


class MedusaCheckpointError(ConfigurationError):
    """A Medusa heads checkpoint is missing, malformed or does not match the expected layout."""


def save_medusa_heads(heads: MedusaHeads, path: str | Path, *, base_model_name_or_path: str) -> Path:
    """Write `heads` to the directory `path` in FasterDecoding format (safetensors). Returns the directory."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "medusa_num_heads": heads.num_heads,
        "medusa_num_layers": heads.num_layers,
        "medusa_own_lm_heads": heads.own_lm_heads,
        "medusa_recurrent": heads.recurrent,
        "base_model_name_or_path": base_model_name_or_path,
        "hidden_size": heads.hidden_size,
        "vocab_size": heads.vocab_size,
    }
    tensors = {name: tensor.cpu() for name, tensor in heads.state_dict_faster_decoding().items()}
    save_file(tensors, str(directory / SAFETENSORS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    stale_pickle = directory / PICKLE_FILE
    if stale_pickle.exists():
        stale_pickle.unlink()
    return directory


def has_medusa_heads(path: str | Path) -> bool:
    """True when `path` is a directory holding a heads weights file."""
    directory = Path(path)
    return (directory / SAFETENSORS_FILE).is_file() or (directory / PICKLE_FILE).is_file()


def read_medusa_config(path: str | Path) -> dict[str, Any]:
    """The heads directory's config.json (empty dict when absent)."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        return {}
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise MedusaCheckpointError(f"{config_path} is not valid JSON: {exc}") from exc


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / SAFETENSORS_FILE).is_file():
        return load_file(str(directory / SAFETENSORS_FILE))
    if (directory / PICKLE_FILE).is_file():
        loaded = torch.load(directory / PICKLE_FILE, map_location="cpu", weights_only=True)
        if not isinstance(loaded, dict):
            raise MedusaCheckpointError(f"{directory / PICKLE_FILE} does not hold a state dict")
        return loaded
    raise MedusaCheckpointError(
        f"no Medusa heads in {directory}: expected {SAFETENSORS_FILE} or {PICKLE_FILE}"
    )


def _infer_layout(
    weights: dict[str, torch.Tensor], config: dict[str, Any], source: Path
) -> tuple[int, int, bool]:
    """(num_heads, num_layers, own_lm_heads) from the weight names, cross-checked with config.json."""
    head_layers: dict[int, set[int]] = {}
    for key in weights:
        match = _KEY_PATTERN.match(key)
        if match is None:
            raise MedusaCheckpointError(f"unexpected key {key!r} in Medusa heads at {source}")
        head_layers.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not head_layers:
        raise MedusaCheckpointError(f"Medusa heads file at {source} holds no tensors")
    num_heads = max(head_layers) + 1
    if sorted(head_layers) != list(range(num_heads)):
        raise MedusaCheckpointError(f"Medusa heads at {source} skip head indices: {sorted(head_layers)}")
    num_layers = int(config.get("medusa_num_layers", _layers_with_linear(weights)))
    own_lm_heads = f"0.{num_layers}.weight" in weights
    recorded = config.get("medusa_own_lm_heads")
    if recorded is not None and bool(recorded) != own_lm_heads:
        raise MedusaCheckpointError(
            f"{source}/{CONFIG_FILE} says medusa_own_lm_heads={recorded} but the weights "
            f"{'have' if own_lm_heads else 'lack'} per-head projections '{{head}}.{num_layers}.weight'"
        )
    if config.get("medusa_num_heads") not in (None, num_heads):
        log.warning(
            "%s says medusa_num_heads=%s but the weights hold %d heads; using %d",
            source / CONFIG_FILE,
            config["medusa_num_heads"],
            num_heads,
            num_heads,
        )
    return num_heads, num_layers, own_lm_heads


def _is_recurrent(first_linear: torch.Tensor | None, config: dict[str, Any], source: Path) -> bool:
    """Recurrent heads' first linear reads [state; token embedding]: [H, 2H] instead of [H, H]."""
    recurrent = first_linear is not None and first_linear.shape[1] == 2 * first_linear.shape[0]
    recorded = config.get("medusa_recurrent")
    if recorded is not None and bool(recorded) != recurrent:
        raise MedusaCheckpointError(
            f"{source}/{CONFIG_FILE} says medusa_recurrent={recorded} but head 0's first linear has shape "
            f"{tuple(first_linear.shape) if first_linear is not None else None}"
        )
    return recurrent


def _layers_with_linear(weights: dict[str, torch.Tensor]) -> int:
    return len({key.split(".")[1] for key in weights if key.startswith("0.") and ".linear." in key})


def load_medusa_heads(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> MedusaHeads:
    """Load FasterDecoding-format heads from the directory `path`, strictly."""
    directory = Path(path)
    if not directory.is_dir():
        raise MedusaCheckpointError(f"Medusa heads directory {directory} does not exist")
    config = read_medusa_config(directory)
    weights = _read_weights(directory)
    num_heads, num_layers, own_lm_heads = _infer_layout(weights, config, directory)
    first_linear = weights.get("0.0.linear.weight") if num_layers > 0 else None
    hidden_size = int(first_linear.shape[0]) if first_linear is not None else None
    recurrent = _is_recurrent(first_linear, config, directory)
    if own_lm_heads:
        vocab_size, projection_hidden = weights[f"0.{num_layers}.weight"].shape
        hidden_size = hidden_size or projection_hidden
    else:
        vocab_size = int(config.get("vocab_size", 0))
    if hidden_size is None:
        hidden_size = int(config.get("hidden_size", 0))
    if not hidden_size:
        raise MedusaCheckpointError(f"cannot tell the hidden size of the Medusa heads at {directory}")
    heads = MedusaHeads(
        hidden_size, vocab_size, num_heads, num_layers, own_lm_heads=own_lm_heads, recurrent=recurrent
    )
    expected = heads.state_dict_faster_decoding()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise MedusaCheckpointError(
            f"Medusa heads at {directory} do not match a {num_heads}-head, {num_layers}-layer layout: "
            f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise MedusaCheckpointError(
                f"Medusa heads at {directory}: {name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected[name].shape)}"
            )
    heads.load_state_dict({f"heads.{name}": tensor for name, tensor in weights.items()}, strict=True)
    log.info(
        "loaded %d %sMedusa heads (%d layers, %s projections) from %s",
        num_heads,
        "recurrent " if recurrent else "",
        num_layers,
        "own" if own_lm_heads else "shared lm_head",
        directory,
    )
    return heads.to(device=device, dtype=dtype).eval()


def load_heads_for(loaded: LoadedModel, settings: EngineSettings) -> MedusaHeads | None:
    """The Medusa heads configured for the model (fetched first when given as a hub id) checked against it, or
    None (speculation off, logged)."""
    if not settings.speculation:
        log.info("speculation disabled by settings: plain decoding")
        return None
    directory = heads_directory(settings, fetch=True)
    if directory is None:
        log.info("no Medusa heads configured for %s: speculation off, plain decoding", loaded.name)
        return None
    if not has_medusa_heads(directory):
        log.info("no Medusa heads in %s: speculation off, plain decoding", directory)
        return None
    heads = load_medusa_heads(directory, dtype=loaded.dtype, device=loaded.device)
    vocab, hidden = loaded.model.get_output_embeddings().get_parameter("weight").shape
    if heads.hidden_size != hidden or (heads.own_lm_heads and heads.vocab_size != vocab):
        source = f"{settings.heads_path} ({directory})" if settings.heads_path else str(directory)
        raise ConfigurationError(
            f"Medusa heads {source} were built for hidden size {heads.hidden_size} / vocabulary "
            f"{heads.vocab_size}, but {loaded.name} has {hidden} / {vocab}"
        )
    return heads


def load_draft_vocabulary(
    settings: EngineSettings, heads: MedusaHeads | None, lm_head: nn.Module
) -> DraftVocabulary | None:
    """The draft vocabulary shipped beside heads that share the lm_head, cut to settings.draft_vocab_size."""
    if heads is None or heads.own_lm_heads or settings.draft_vocab_size == 0:
        return None
    directory = heads_directory(settings)
    path = directory / DRAFT_VOCABULARY_FILE if directory is not None else None
    if path is None or not path.is_file():
        return None
    token_ids = json.loads(path.read_text())[: settings.draft_vocab_size]
    vocab = lm_head.get_parameter("weight").shape[0]
    if not token_ids or not all(isinstance(token, int) and 0 <= token < vocab for token in token_ids):
        raise ConfigurationError(f"{path} must list token ids in [0, {vocab})")
    log.info("heads draft over the %d most frequent tokens (%s)", len(token_ids), path)
    return DraftVocabulary.from_lm_head(lm_head, torch.tensor(token_ids, dtype=torch.long))
