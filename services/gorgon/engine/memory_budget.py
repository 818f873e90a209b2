"""The KV-cache token budget the Medusa engine admits rows by, computed once at start from the device's memory.

The cache is not paged: every row of the running batch holds as many KV slots as the longest row's capacity
(engine/batch.py pads rows to one capacity), so the engine's memory grows with rows x that capacity. The budget is
how many slots fit in what `gpu_memory_utilization` leaves once the weights are loaded, after a reserve for the
largest step's activations:

    tokens = (usable - step reserve) // bytes per slot

- usable: on CUDA total x fraction - (total - free), what the fraction leaves after the memory already in use
  (the weights, the CUDA context, other processes), as vLLM reads its `gpu_memory_utilization`; on CPU
  available x fraction (RAM available once the weights are loaded, within the container's memory limit).
- bytes per slot: the slot's keys and values in every layer (2 x layers x kv_heads x head_dim x dtype bytes), plus
  the larger of two transients. A join or a leave builds the batch's new cache beside the old one
  (Batch.concatenate, Batch.filter): a second copy. A verification forward whose attention runs as virtual rows
  (engine/attention.py, the CPU's choice) copies one layer's window per slot: converted to float32, and for a
  branching tree gathered per node first.
- step reserve: the activations of the largest step, a decoding step of every row over the largest tree (its logits
  in the model's dtype plus two float32 copies for acceptance and sampling) or a prefill of every row's chunk; per
  token, of one layer at a time, three intermediate-wide and six hidden-wide tensors.

These are estimates of what the engine allocates, not a measurement (vLLM profiles a forward instead); where a
term is uncertain it is counted large.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig

from gorgon.core.errors import ConfigurationError
from gorgon.engine.attention import VerificationAttention, verification_attention
from gorgon.engine.tree import TreeBuffers

GIB = 1024**3
MIB = 1024**2
KIB = 1024
FLOAT32_BYTES = 4
HIDDEN_WIDE_ACTIVATIONS = 6  # residual, normed input, q/k/v, attention output, its projection, the MLP output
INTERMEDIATE_WIDE_ACTIVATIONS = 3  # the MLP's gate, up and their product
FLOAT32_LOGIT_COPIES = 2  # probabilities and a working copy in acceptance and sampling

PROC_MEMINFO = Path("/proc/meminfo")
# The memory limit and usage of the process's cgroup: v2, else v1 (a container sees the host's /proc/meminfo).
CGROUP_MEMORY_FILES = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ),
)


@dataclass(frozen=True, slots=True)
class ModelGeometry:
    """The sizes of a decoder that set its memory per token (from its HF config)."""

    num_layers: int
    kv_heads: int  # num_key_value_heads under grouped-query attention, else num_attention_heads
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int

    @classmethod
    def from_config(cls, config: PretrainedConfig, dtype: torch.dtype) -> ModelGeometry:
        hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
        return cls(
            num_layers=int(config.num_hidden_layers),
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or hidden // heads),
            hidden_size=hidden,
            intermediate_size=int(getattr(config, "intermediate_size", None) or 4 * hidden),
            vocab_size=int(config.vocab_size),
            dtype_bytes=dtype.itemsize,
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """One token's keys and values in every layer."""
        return 2 * self.num_layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def activation_bytes_per_token(self) -> int:
        """One token's activations in a forward, of one layer at a time."""
        widths = (
            INTERMEDIATE_WIDE_ACTIVATIONS * self.intermediate_size
            + HIDDEN_WIDE_ACTIVATIONS * self.hidden_size
        )
        return widths * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class StepShape:
    """The largest step the engine may run."""

    rows: int  # max_batch_size
    tree_nodes: int  # nodes of the largest speculation shape
    prefill_tokens: int  # a prompt's tokens per prefill forward (the prefill chunk)
    window_copies: int  # copies of one layer's keys and values per slot a verification forward makes


def verification_window_copies(shapes: Sequence[TreeBuffers], device: torch.device) -> int:
    """Copies of one layer's window per slot the engine's largest verification forward makes: none where the
    attention reads the cache in place (one masked call), else one float32 copy, per node for a branching tree
    whose keys are gathered per node (engine/attention.py)."""
    if verification_attention(device) is not VerificationAttention.VIRTUAL_ROWS:
        return 0
    return max(1 if shape.is_chain or shape.lookahead else shape.num_nodes for shape in shapes)


def bytes_per_slot(geometry: ModelGeometry, step: StepShape) -> int:
    """A KV slot at the peak of a step: its keys and values plus the larger of a join's second copy and the
    verification forward's copies (module docstring)."""
    kv = geometry.kv_bytes_per_token
    copy_element_bytes = geometry.dtype_bytes + FLOAT32_BYTES  # gathered in the model's dtype, then float32
    attention_copies = step.window_copies * 2 * geometry.kv_heads * geometry.head_dim * copy_element_bytes
    return kv + max(kv, attention_copies)


def step_reserve_bytes(geometry: ModelGeometry, step: StepShape) -> int:
    """Activations of the largest decoding step or prefill forward (module docstring)."""
    logit_bytes = geometry.vocab_size * (geometry.dtype_bytes + FLOAT32_LOGIT_COPIES * FLOAT32_BYTES)
    per_token = geometry.activation_bytes_per_token
    decode_tokens = step.rows * step.tree_nodes
    decode = decode_tokens * (per_token + logit_bytes)
    prefill = step.rows * (step.prefill_tokens * per_token + logit_bytes)  # logits of each row's last token
    return max(decode, prefill)


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """Memory of a device at engine start: free (CPU: available) and total bytes."""

    free_bytes: int
    total_bytes: int


MemorySource = Callable[[torch.device], DeviceMemory]


def device_memory(device: torch.device) -> DeviceMemory:
    """The device's memory now: CUDA's free and total (after the allocator returns its cached blocks, which no
    tensor uses), or the host's RAM for a CPU engine."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(free, total)
    return host_memory()


def host_memory(
    meminfo: Path = PROC_MEMINFO, cgroup_files: Sequence[tuple[Path, Path]] = CGROUP_MEMORY_FILES
) -> DeviceMemory:
    """RAM available and total (`meminfo`), capped by the memory limit of the process's cgroup where one is set
    (`cgroup_files`: (limit, usage) files, the first pair present is read)."""
    free, total = _host_ram(meminfo)
    limit = _cgroup_limit(cgroup_files)
    if limit is None or limit[0] >= total:
        return DeviceMemory(free, total)
    limit_bytes, used_bytes = limit
    return DeviceMemory(max(0, min(free, limit_bytes - used_bytes)), limit_bytes)


def _host_ram(meminfo: Path) -> tuple[int, int]:
    """(available, total) bytes: MemAvailable and MemTotal, else sysconf's free pages where there is no /proc."""
    if not meminfo.is_file():
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    kib = {name: int(fields[name].split()[0]) * KIB for name in ("MemAvailable", "MemTotal")}
    return kib["MemAvailable"], kib["MemTotal"]


def _cgroup_limit(cgroup_files: Sequence[tuple[Path, Path]]) -> tuple[int, int] | None:
    """(limit, usage) bytes of the process's cgroup, None without a limit. Usage counts the page cache, which the
    kernel reclaims before it kills: the headroom is read small."""
    for limit_file, usage_file in cgroup_files:
        if limit_file.is_file() and usage_file.is_file():
            limit = limit_file.read_text().strip()
            return None if limit == "max" else (int(limit), int(usage_file.read_text()))
    return None


def usable_bytes(memory: DeviceMemory, fraction: float, device: torch.device) -> int:
    """What `fraction` leaves the engine's KV cache and steps (module docstring)."""
    if device.type == "cuda":
        in_use = memory.total_bytes - memory.free_bytes
        return int(memory.total_bytes * fraction) - in_use
    return int(memory.free_bytes * fraction)


@dataclass(frozen=True, slots=True)
class KVBudget:
    """The KV slots the engine may hold (`tokens`) and how they were derived, for the start-up log."""

    tokens: int
    bytes_per_slot: int
    kv_bytes_per_token: int
    usable_bytes: int
    reserve_bytes: int
    memory: DeviceMemory
    fraction: float
    device_type: str

    def describe(self) -> str:
        """The budget in tokens and GiB, what a token costs, the step reserve, and where the memory came from."""
        copies = self.bytes_per_slot - self.kv_bytes_per_token
        return (
            f"{self.tokens:,} tokens, {self.tokens * self.bytes_per_slot / GIB:.2f} GiB: "
            f"{_size(self.bytes_per_slot)} a token ({_size(self.kv_bytes_per_token)} its keys and values, "
            f"{_size(copies)} a join's or a verification's copies), {_size(self.reserve_bytes)} reserved for a "
            f"step's activations; from {self.source()}"
        )

    def source(self) -> str:
        """Where the usable memory came from: the setting and the device's memory."""
        setting = f"GORGON_ENGINE_GPU_MEMORY_UTILIZATION={self.fraction:g}"
        free, total = self.memory.free_bytes / GIB, self.memory.total_bytes / GIB
        if self.device_type == "cuda":
            usable = self.usable_bytes / GIB
            return f"{setting} of {total:.1f} GiB, {free:.1f} GiB free at start: {usable:.2f} GiB usable"
        return f"{setting} of the {free:.1f} GiB of {total:.1f} GiB RAM available at start"


def _size(size_bytes: int) -> str:
    """Bytes in the largest binary unit up to GiB under which the number stays at least 1."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"


def kv_budget(
    geometry: ModelGeometry,
    step: StepShape,
    device: torch.device,
    fraction: float,
    *,
    minimum_tokens: int,
    read_memory: MemorySource = device_memory,
) -> KVBudget:
    """The KV token budget on `device` (module docstring). Raises ConfigurationError when it holds fewer than
    `minimum_tokens` (one full context): the engine could not serve its longest request even alone."""
    memory = read_memory(device)
    usable = usable_bytes(memory, fraction, device)
    reserve = step_reserve_bytes(geometry, step)
    per_slot = bytes_per_slot(geometry, step)
    budget = KVBudget(
        tokens=max(0, (usable - reserve) // per_slot),
        bytes_per_slot=per_slot,
        kv_bytes_per_token=geometry.kv_bytes_per_token,
        usable_bytes=usable,
        reserve_bytes=reserve,
        memory=memory,
        fraction=fraction,
        device_type=device.type,
    )
    if budget.tokens < minimum_tokens:
        raise ConfigurationError(
            f"the KV cache budget is {budget.describe()}: fewer than one full context ({minimum_tokens:,} "
            "tokens); raise GORGON_ENGINE_GPU_MEMORY_UTILIZATION or lower GORGON_ENGINE_CONTEXT_LENGTH, "
            "GORGON_ENGINE_MAX_BATCH_SIZE or GORGON_ENGINE_PREFILL_CHUNK_TOKENS"
        )
    return budget


def fits_kv_budget(held_rows: int, held_capacity: int, request_capacity: int, budget_tokens: int) -> bool:
    """Whether one more row of `request_capacity` slots fits beside `held_rows` rows padded to `held_capacity`:
    all of them then take the larger capacity (rows are padded to one, engine/batch.py). An engine holding no row
    always takes one (the budget holds a whole context, checked at start)."""
    if held_rows == 0:
        return True
    return (held_rows + 1) * max(held_capacity, request_capacity) <= budget_tokens
