"""A tiny random Llama with a character-level chat tokenizer stands in for the base model: the same code paths
as SmolLM2 (chat template, left-padded batched generate, final-norm hook), milliseconds per step."""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gorgon.training.base_model import BaseModel
from gorgon.training.distill import Sequences, generate_greedy

SPECIAL_TOKENS = ("<pad>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def character_tokenizer() -> PreTrainedTokenizerFast:
    characters = [character for character in string.printable if character not in "\x0b\x0c"]
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *characters])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model's ops are too small to share between threads; on a busy CPU two threads stall each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_base() -> BaseModel:
    tokenizer = character_tokenizer()
    torch.manual_seed(1234)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return BaseModel(model=model, tokenizer=tokenizer, name="tiny-llama")


def tiny_prompts(count: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (count,), generator=generator).tolist()
    return [torch.randint(3, 100, (length,), generator=generator).tolist() for length in lengths]


@pytest.fixture(scope="session")
def make_prompts() -> Callable[..., list[list[int]]]:
    """`make_prompts(count, seed=0)`: random prompt token ids for the tiny model."""
    return tiny_prompts


@pytest.fixture(scope="session")
def tiny_sequences(tiny_base: BaseModel) -> Sequences:
    return generate_greedy(tiny_base, tiny_prompts(24), max_new_tokens=40)
