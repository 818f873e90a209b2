"""The GPU check's load phase: the versions it reports and the load test's prompts it sizes with the model's
tokenizer (loading and timing the model itself runs in tests/scripts/test_gpu_check.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_tiny import byte_tokenizer
from transformers import LlamaTokenizer
from vicuna_tiny import write_sentencepiece_tokenizer

from gorgon.bench.gpu_check_load import sized_prompts, stack_versions, write_prompt_set
from gorgon_loadtest.prompts import load_prompts


def test_the_versions_are_the_running_stacks() -> None:
    versions = stack_versions()
    assert versions["torch"] == torch.__version__
    assert versions["cuda_available"] is torch.cuda.is_available()
    assert (versions["gpu"] is None) is not torch.cuda.is_available()
    assert versions["deepspeed"] and versions["transformers"]


@pytest.mark.parametrize(("tokens", "count"), [(5, 3), (1500, 48)])
def test_prompts_are_different_and_exactly_sized_for_a_byte_tokenizer(tokens: int, count: int) -> None:
    tokenizer = byte_tokenizer()
    prompts = sized_prompts(tokenizer, tokens, count)
    assert len(set(prompts)) == count
    assert all(len(tokenizer.encode(prompt, add_special_tokens=False)) == tokens for prompt in prompts)


def test_prompts_are_about_the_size_asked_for_with_a_sentencepiece_tokenizer(tmp_path: Path) -> None:
    write_sentencepiece_tokenizer(tmp_path)
    tokenizer = LlamaTokenizer.from_pretrained(tmp_path)
    prompts = sized_prompts(tokenizer, 200, 8)
    assert len(set(prompts)) == 8
    assert all(abs(len(tokenizer.encode(prompt, add_special_tokens=False)) - 200) <= 3 for prompt in prompts)


def test_the_prompts_are_a_set_the_load_test_reads(tmp_path: Path) -> None:
    prompts = ["first\nline", 'with "quotes"', "ünïcode"]
    path = tmp_path / "out" / "prompts.jsonl"
    write_prompt_set(prompts, path)
    assert load_prompts(str(path)) == prompts
