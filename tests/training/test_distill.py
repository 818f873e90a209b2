from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gorgon.core.errors import ConfigurationError
from gorgon.training.base_model import BaseModel
from gorgon.training.distill import (
    DistillSettings,
    Sequences,
    build_shards,
    generate_greedy,
    teacher_forced,
)


def test_captured_hidden_states_reproduce_every_greedy_token(
    tiny_base: BaseModel, tiny_sequences: Sequences
) -> None:
    predicted = tiny_base.lm_head(tiny_sequences.hidden.float()).argmax(-1)
    assert torch.equal(predicted, tiny_sequences.response_ids.long())
    assert int(tiny_sequences.lengths.sum()) == len(tiny_sequences)


def test_a_batched_response_equals_the_same_prompt_decoded_alone(tiny_base: BaseModel, make_prompts) -> None:
    prompts = make_prompts(6, seed=3)
    batched = generate_greedy(tiny_base, prompts, max_new_tokens=20)
    alone = generate_greedy(tiny_base, [prompts[4]], max_new_tokens=20)
    start = int(batched.lengths[:4].sum())
    row = batched.response_ids[start : start + int(batched.lengths[4])]
    assert torch.equal(row, alone.response_ids)


def test_responses_stop_after_the_first_stop_token(tiny_base: BaseModel, tiny_sequences: Sequences) -> None:
    start = 0
    for length in tiny_sequences.lengths.tolist():
        response = tiny_sequences.response_ids[start : start + length].tolist()
        assert not tiny_base.stop_token_ids & set(response[:-1])
        start += length


def test_teacher_forced_hidden_states_give_the_model_logits(tiny_base: BaseModel, make_prompts) -> None:
    chunk = make_prompts(1, seed=5)[0] * 3
    sequences = teacher_forced(tiny_base, [chunk])
    assert sequences.response_ids.tolist() == chunk[1:]
    logits = tiny_base.model(input_ids=torch.tensor([chunk])).logits[0, :-1]
    assert torch.allclose(tiny_base.lm_head(sequences.hidden.float()), logits, atol=2e-2)


def test_shards_are_reused_when_the_run_is_repeated(
    tiny_base: BaseModel, make_prompts, tmp_path: Path
) -> None:
    settings = DistillSettings("tiny-llama", "test", max_new_tokens=8, batch_size=2)
    prompts = make_prompts(5)
    calls: list[int] = []

    def make(batch):
        calls.append(len(batch))
        return generate_greedy(tiny_base, batch, max_new_tokens=8)

    first = build_shards(tmp_path, settings, prompts, make, "test")
    assert calls == [2, 2, 1]
    (tmp_path / "shard-00001.safetensors").unlink()
    second = build_shards(tmp_path, settings, prompts, make, "test")
    assert calls == [2, 2, 1, 2]
    assert torch.equal(first.hidden, second.hidden)
    assert torch.equal(first.response_ids, second.response_ids)


def test_shards_made_with_other_settings_are_refused(
    tiny_base: BaseModel, make_prompts, tmp_path: Path
) -> None:
    settings = DistillSettings("tiny-llama", "test", max_new_tokens=8, batch_size=2)
    prompts = make_prompts(2)
    build_shards(tmp_path, settings, prompts, lambda batch: generate_greedy(tiny_base, batch, 8), "test")
    with pytest.raises(ConfigurationError, match="other settings"):
        build_shards(tmp_path, replace(settings, max_new_tokens=16), prompts, lambda batch: None, "test")


def test_distillation_captures_hidden_states_of_the_prepacked_bf16_engine(
    tiny_base: BaseModel, make_prompts
) -> None:
    """In bf16 on CPU the engine runs a prepacked copy of the decoder: its hidden states must still be captured."""
    bf16 = BaseModel(
        model=copy.deepcopy(tiny_base.model).to(torch.bfloat16),
        tokenizer=tiny_base.tokenizer,
        name=tiny_base.name,
    )
    sequences = generate_greedy(bf16, make_prompts(3, seed=5), max_new_tokens=6)
    assert sequences.hidden.shape == (len(sequences), bf16.hidden_size)
    predicted = bf16.model.lm_head(sequences.hidden.to(torch.bfloat16)).argmax(-1)
    assert int(sequences.lengths.sum()) == len(sequences) > 0
    assert (predicted == sequences.response_ids.long()).float().mean() > 0.9
