"""One end-to-end check on the real default model (SmolLM2-135M-Instruct GGUF): slow."""

from __future__ import annotations

import pytest
import torch

from gorgon.engine import load_engine
from gorgon.engine.config import EngineSettings
from gorgon.engine.interface import ChatMessage, FinishReason, GenerationRequest, SamplingParams
from gorgon.engine.tree import TreeBuffers


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


@pytest.mark.slow
def test_shipped_heads_in_every_shape_at_batch_4_give_the_plain_greedy_output() -> None:
    """The real model, bf16, its shipped heads, every speculation shape in turn (plain, chain, tree) in one batch
    of 4: each row's text equals plain greedy decoding's. A kernel whose rounding depends on how many queries or
    rows share a forward shows here (an SDPA grouped-query path that did: 12 of 16 bench prompts diverged)."""
    from engine_tiny import CyclingSelector

    from gorgon.bench.engine_run import run_engine
    from gorgon.bench.prompts import BENCH_PROMPTS

    settings = EngineSettings()
    speculative = load_engine(settings)
    assert speculative.info.speculative
    speculative.scheduler.selector = CyclingSelector(speculative.scheduler.selector.shapes)
    plain = load_engine(
        settings.model_copy(update={"heads_path": str(settings.default_model_heads_path / "missing")})
    )
    prompts = [speculative.encode([ChatMessage("user", text)]) for text in BENCH_PROMPTS[:4]]
    expected = run_engine(plain, prompts, 64).token_ids
    output = run_engine(speculative, prompts, 64)
    assert sum(output.shape_steps.values()) > 0 and len(output.shape_steps) == len(
        speculative.scheduler.selector.shapes
    )
    assert output.token_ids == expected


@pytest.mark.slow
def test_a_prompt_decodes_in_each_shape_at_batch_1_what_plain_decoding_gives() -> None:
    """On an AVX2-only AMD EPYC, bench prompt 0 alone drifted from plain greedy at token 14 with the chain and
    with the tree forced on every step, until attention ran each emitted query in a call of its own."""
    from gorgon.bench.engine_run import run_engine
    from gorgon.bench.prompts import BENCH_PROMPTS
    from gorgon.engine.shapes import ShapeSelector

    class OneShape(ShapeSelector):
        def choose(self, batch_size: int, *, speculative_rows: int) -> TreeBuffers:
            return self.shapes[-1]

    settings = EngineSettings()
    plain = load_engine(
        settings.model_copy(update={"heads_path": str(settings.default_model_heads_path / "missing")})
    )
    prompt = [plain.encode([ChatMessage("user", BENCH_PROMPTS[0])])]
    expected = run_engine(plain, prompt, 32).token_ids
    speculative = load_engine(settings)
    for shape in speculative.scheduler.selector.shapes[1:]:
        speculative.scheduler.selector = OneShape([speculative.scheduler.selector.plain, shape])
        output = run_engine(speculative, prompt, 32)
        assert output.shape_steps[shape.name] > 0
        assert output.token_ids == expected, shape.name


@pytest.mark.slow
def test_a_prompt_prefilled_beside_a_longer_one_leaves_the_cache_it_leaves_alone() -> None:
    """A 33-token prompt padded to 42 queries left other KV values than alone: its last token's query shared an
    SDPA call past a 32-query block (an AVX2-only AMD EPYC), and it was a lone row of the down_proj product alone
    (AVX512_BF16). Each row attends in a call of its own (engine/attention.py), and no product has a lone row
    (engine/kernels/packed.row_blocks)."""
    from gorgon.bench.prompts import BENCH_PROMPTS

    settings = EngineSettings()
    engine = load_engine(
        settings.model_copy(update={"heads_path": str(settings.default_model_heads_path / "missing")})
    )
    longer = engine.encode([ChatMessage("user", BENCH_PROMPTS[4])])
    short = longer[:33]

    def cache_after_prefill(prompts: list[list[int]]) -> torch.Tensor:
        for index, prompt in enumerate(prompts):
            engine.add(GenerationRequest(f"p{index}", tuple(prompt), SamplingParams(max_new_tokens=8)))
        engine.step()
        storage = engine.batch.cache.storage[:, 0, :, : len(short)].clone()
        for index in range(len(prompts)):
            engine.cancel(f"p{index}")
        while engine.num_active:
            engine.step()
        return storage

    assert len(longer) > 40
    assert torch.equal(cache_after_prefill([short, longer]), cache_after_prefill([short]))
