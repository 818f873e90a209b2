"""Medusa heads and their checkpoint format (FasterDecoding/Medusa layout).

A head is `num_layers` residual blocks `ResBlock(x) = x + SiLU(Linear(x))`, then a vocabulary projection.
Two variants exist:

* own projections (FasterDecoding's released heads): head k has its own `Linear(H, V, bias=False)`;
* shared projection (TGI's "MedusaHeadV2"): every head reuses the base model's `lm_head`.

Either variant can be *recurrent* (gorgon's, after Hydra and ReDrafter): head k's first block also reads the
embedding of the token drafted before it, and its state comes from head k - 1 instead of h_t:
`s_0 = h_t`, `s_{k+1} = s_k + SiLU(Linear([s_k; E(x_{k+1})]))` (then the head's other ResBlocks), where x_1 is the
token the base model chose and x_{k+1} head k - 1's draft. Head k then knows the path it continues, which a
Medusa-1 head (it sees only h_t) does not. Its first linear is `[H, 2H]` wide; the rest of the format is the same.

On disk (a directory): `config.json` with `medusa_num_heads`, `medusa_num_layers`, `base_model_name_or_path`
(and, written by us, `medusa_own_lm_heads` and `medusa_recurrent`), plus `medusa_lm_head.safetensors` or `medusa_lm_head.pt` holding
`{head}.{layer}.linear.weight|bias` and, with own projections, `{head}.{num_layers}.weight`.
The head count is taken from the weights (the released medusa-vicuna-7b-v1.3 config says 2, the file holds 5),
and loading is strict: a missing or unexpected key is an error, never silently untrained heads.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gorgon.core.errors import ConfigurationError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "medusa_lm_head.safetensors"
PICKLE_FILE = "medusa_lm_head.pt"
_KEY_PATTERN = re.compile(r"^(\d+)\.(\d+)\.")


class MedusaCheckpointError(ConfigurationError):
    """A Medusa heads checkpoint is missing, malformed or does not match the expected layout."""


class ResBlock(nn.Module):
    """x + SiLU(Linear(x)); the linear starts at zero so an untrained block is the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class RecurrentBlock(nn.Module):
    """state + SiLU(Linear([state; token_embedding])); starts as the identity on the state, like ResBlock."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        self.act = nn.SiLU()

    def forward(self, state: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        return state + self.act(self.linear(torch.cat([state, token_embedding], dim=-1)))


class MedusaHeads(nn.Module):
    """K Medusa heads. `heads[k]` is a Sequential of `num_layers` blocks (+ its own projection if any); with
    `recurrent`, block 0 of each head is a RecurrentBlock (see the module docstring)."""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        num_heads: int,
        num_layers: int = 1,
        *,
        own_lm_heads: bool,
        recurrent: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < int(recurrent):
            raise ValueError(
                f"need num_heads >= 1 and num_layers >= {int(recurrent)}, got {num_heads}, {num_layers}"
            )
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.own_lm_heads = own_lm_heads
        self.recurrent = recurrent
        self.heads = nn.ModuleList(self._build_head() for _ in range(num_heads))

    def _build_head(self) -> nn.Sequential:
        # A fresh block per layer: never `[ResBlock(h)] * n`, which shares one module n times.
        layers: list[nn.Module] = [ResBlock(self.hidden_size) for _ in range(self.num_layers)]
        if self.recurrent:
            layers[0] = RecurrentBlock(self.hidden_size)
        if self.own_lm_heads:
            layers.append(nn.Linear(self.hidden_size, self.vocab_size, bias=False))
        return nn.Sequential(*layers)

    def head_state(
        self, k: int, state: torch.Tensor, token_embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Head k's blocks over `state` [..., H] (recurrent heads also read the previous token's embedding)."""
        blocks = list(self.heads[k])[: self.num_layers]
        if self.recurrent:
            if token_embedding is None:
                raise ValueError("recurrent heads need the embedding of the token each head continues")
            state = blocks.pop(0)(state, token_embedding)
        for block in blocks:
            state = block(state)
        return state

    def project(self, k: int, state: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Head k's logits from its state: its own projection, or the shared lm_head."""
        return self.heads[k][self.num_layers](state) if self.own_lm_heads else lm_head(state)

    def forward(
        self, hidden: torch.Tensor, lm_head: nn.Module, token_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden: [B, S, H] (last hidden state of the base model) -> logits: [K, B, S, V].

        Recurrent heads also take token_embeddings [K, B, S, H]: entry k embeds the token head k continues (the
        base model's choice for k = 0, the true or drafted token before it otherwise).
        """
        if not self.recurrent:
            return torch.stack(
                [self.project(k, self.head_state(k, hidden), lm_head) for k in range(self.num_heads)]
            )
        if token_embeddings is None:
            raise ValueError("recurrent heads need token_embeddings [K, B, S, H]")
        outputs, state = [], hidden
        for k in range(self.num_heads):
            state = self.head_state(k, state, token_embeddings[k])
            outputs.append(self.project(k, state, lm_head))
        return torch.stack(outputs)

    def state_dict_faster_decoding(self) -> dict[str, torch.Tensor]:
        """Weights under FasterDecoding's key names (`{head}.{layer}.linear.weight`, `{head}.{L}.weight`)."""
        # nn.ModuleList keys are "heads.{k}.{layer}..."; FasterDecoding's are "{k}.{layer}...".
        return {
            name.removeprefix("heads."): tensor.detach().contiguous()
            for name, tensor in self.state_dict().items()
        }


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


def read_medusa_config(path: str | Path) -> dict:
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


def _infer_layout(weights: dict[str, torch.Tensor], config: dict, source: Path) -> tuple[int, int, bool]:
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


def _is_recurrent(first_linear: torch.Tensor | None, config: dict, source: Path) -> bool:
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
