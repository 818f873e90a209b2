"""Vicuna v1.3 with FasterDecoding's Medusa-1 heads, on a tiny model in their on-disk layouts: the loader reads the
sentencepiece tokenizer and the .bin shards, and `mc_sim_7b_63` decodes exactly what plain greedy decodes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import openai
import pytest
import torch
from engine_tiny import CyclingSelector
from transformers import LlamaTokenizer
from vicuna_tiny import VOCAB, faster_decoding_heads, tiny_vicuna_model, write_faster_decoding_heads

from gorgon.engine import load_engine
from gorgon.engine.chat import vicuna_prompt
from gorgon.engine.config import EngineSettings
from gorgon.engine.interface import ChatMessage, GenerationRequest, SamplingParams
from gorgon.engine.loader import load_model_and_tokenizer
from gorgon.engine.medusa_engine import MedusaEngine
from gorgon.local.processes import free_port

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


def _ready_url(process: subprocess.Popen[str]) -> str:
    ready_line = process.stdout.readline() if process.stdout else ""
    match = re.match(r"gorgon ready: (http://\S+) ", ready_line)
    assert match, ready_line
    return match.group(1)


@pytest.mark.processes
def test_gorgon_up_serves_vicuna_chat_under_its_served_name(vicuna_dir, heads_dir) -> None:
    """The model baked in at a path with no chat template answers as vicuna-7b-v1.3, with Vicuna v1.1's prompt,
    whole and streamed, its heads loaded from FasterDecoding's layout."""
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "GORGON_REDIS_URL"}}
    env |= {
        "GORGON_ENGINE_SERVED_MODEL_NAME": "vicuna-7b-v1.3",
        "GORGON_ENGINE_DEVICE": "cpu",
        "GORGON_ENGINE_DTYPE": "float32",
        "GORGON_ENGINE_USE_DEEPSPEED": "false",
        "GORGON_ENGINE_MEDUSA_CHOICES": "mc_sim_7b_63",
    }
    command = [sys.executable, "-m", "gorgon.cli", "up", "--port", str(free_port()), "--workers", "1"]
    command += ["--max-workers", "1", "--model", str(vicuna_dir), "--heads", str(heads_dir)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"{_ready_url(process)}/v1", api_key="unused", timeout=60)
        assert [model.id for model in client.models.list()] == ["vicuna-7b-v1.3"]
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(
            model="vicuna-7b-v1.3", messages=messages, max_tokens=12, temperature=0
        )
        tokenizer = LlamaTokenizer.from_pretrained(vicuna_dir)
        expected_prompt = vicuna_prompt([ChatMessage(**message) for message in messages])
        assert reply.usage is not None
        assert reply.usage.prompt_tokens == len(tokenizer.encode(expected_prompt))
        assert reply.choices[0].message.content
        stream = client.chat.completions.create(
            model="vicuna-7b-v1.3", messages=messages, max_tokens=12, temperature=0, stream=True
        )
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert streamed == reply.choices[0].message.content
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
