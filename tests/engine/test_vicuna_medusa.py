"""Vicuna v1.3 with FasterDecoding's Medusa-1 heads, on a tiny model in their on-disk layouts: the loader reads the
sentencepiece tokenizer and the .bin shards, and `mc_sim_7b_63` decodes exactly what plain greedy decodes."""

from __future__ import annotations

import pytest
import torch
from engine_tiny import CyclingSelector
from transformers import LlamaTokenizer
from vicuna_tiny import VOCAB, faster_decoding_heads, tiny_vicuna_model, write_faster_decoding_heads

from gorgon.engine import load_engine
from gorgon.engine.config import EngineSettings
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.engine.loader import load_model_and_tokenizer
from gorgon.engine.medusa_engine import MedusaEngine

HEADS = 3  # fewer than mc_sim_7b_63's depth of 4: the tree is cut to the nodes the heads can fill
PROMPTS = (
    "USER: What is the capital of France? ASSISTANT:",
    "Once upon a time",
    "fox",
    "abc def ghi jkl mno",
)
NEW_TOKENS = 24


def vicuna_settings(vicuna_dir, **overrides: object) -> EngineSettings:
    return EngineSettings(
        model=str(vicuna_dir), device="cpu", dtype="float32", use_deepspeed=False, threads=1, **overrides
    )


@pytest.fixture(scope="module")
def heads_dir(vicuna_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("medusa-tiny-vicuna")
    write_faster_decoding_heads(faster_decoding_heads(64, VOCAB, HEADS), directory, "lmsys/vicuna-7b-v1.3")
    return directory


def test_the_vicuna_layout_loads_its_sentencepiece_tokenizer_and_bin_shards(vicuna_dir) -> None:
    assert not (vicuna_dir / "tokenizer.json").exists()
    assert len(list(vicuna_dir.glob("pytorch_model-*.bin"))) > 1
    loaded = load_model_and_tokenizer(vicuna_settings(vicuna_dir))
    assert isinstance(loaded.tokenizer, LlamaTokenizer)
    assert not loaded.tokenizer.chat_template
    text = "The capital of France is Paris."
    ids = loaded.tokenizer.encode(text)
    assert ids[0] == loaded.tokenizer.bos_token_id and len(ids) < len(text)
    assert loaded.tokenizer.decode(ids, skip_special_tokens=True) == text
    written = tiny_vicuna_model()
    for name, tensor in written.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def decode(engine: MedusaEngine, prompts: tuple[str, ...]) -> tuple[dict[str, list[int]], int]:
    """Greedy tokens per prompt, all prompts in one batch, and the tokens drafted; every shape in turn."""
    engine.scheduler.selector = CyclingSelector(engine.scheduler.selector.shapes)
    for index, prompt in enumerate(prompts):
        params = SamplingParams(max_new_tokens=NEW_TOKENS)
        engine.add(GenerationRequest(str(index), tuple(engine.encode(prompt)), params))
    tokens: dict[str, list[int]] = {}
    drafted = 0
    while engine.num_active:
        for event in engine.step():
            tokens.setdefault(event.request_id, []).extend(event.token_ids)
            drafted += event.drafted_tokens
    return tokens, drafted


@pytest.mark.parametrize("batch", [1, 4])
def test_faster_decoding_heads_with_mc_sim_7b_63_decode_as_plain_greedy(
    vicuna_dir, heads_dir, batch: int
) -> None:
    medusa = load_engine(
        vicuna_settings(vicuna_dir, heads_path=str(heads_dir), medusa_choices="mc_sim_7b_63")
    )
    assert medusa.parts.heads is not None and medusa.parts.heads.num_heads == HEADS
    tree = medusa.scheduler.selector.shapes[-1]
    assert tree.name == "mc_sim_7b_63" and 1 < tree.num_nodes < 64
    plain = load_engine(vicuna_settings(vicuna_dir))
    assert plain.parts.heads is None
    prompts = PROMPTS[:batch]
    expected, _ = decode(plain, prompts)
    tokens, drafted = decode(medusa, prompts)
    assert tokens == expected
    assert drafted > 0 and len(expected) == batch and all(expected.values())
