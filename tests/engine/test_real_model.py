"""One end-to-end check on the real default model (SmolLM2-135M-Instruct GGUF): slow."""

from __future__ import annotations

import pytest
import torch

from gorgon.engine import load_engine
from gorgon.engine.config import EngineSettings
from gorgon.engine.interface import ChatMessage, FinishReason, GenerationRequest, SamplingParams


@pytest.mark.slow
def test_default_model_chat_matches_hf_generate(tmp_path) -> None:
    engine = load_engine(EngineSettings(heads_path=tmp_path))  # no heads there: plain decoding
    assert engine.info.speculative is False
    assert engine.info.context_length == 8192
    prompt = engine.encode([ChatMessage("user", "What is the capital of France?")])
    engine.add(GenerationRequest("france", tuple(prompt), SamplingParams(max_new_tokens=12)))
    events = []
    while engine.num_active:
        events += engine.step()
    tokens = [token for event in events for token in event.token_ids]
    with torch.inference_mode():
        output = engine.loaded.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    expected = output[0, len(prompt) :].tolist()
    assert tokens == expected[: len(tokens)]
    assert "Paris" in "".join(event.text for event in events)
    assert events[-1].finish_reason in (FinishReason.LENGTH, FinishReason.STOP)


@pytest.mark.slow
def test_default_model_loads_in_float32_through_deepspeed(tmp_path) -> None:
    """GGUF models come back flagged as quantized; DeepSpeed's init_inference calls .float() / .half() for fp32
    and fp16 (the CUDA default), which transformers refuses on a quantized model."""
    engine = load_engine(EngineSettings(heads_path=tmp_path, dtype="float32", use_deepspeed=True))
    assert engine.loaded.uses_deepspeed
    assert engine.loaded.model.lm_head.weight.dtype == torch.float32
    prompt = engine.encode([ChatMessage("user", "What is the capital of France?")])
    engine.add(GenerationRequest("france", tuple(prompt), SamplingParams(max_new_tokens=8)))
    text = ""
    while engine.num_active:
        text += "".join(event.text for event in engine.step())
    assert "Paris" in text
