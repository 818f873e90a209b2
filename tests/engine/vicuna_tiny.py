"""A tiny Llama in Vicuna v1.3's on-disk layout, and Medusa-1 heads in FasterDecoding's, built in-process.

The model directory holds what lmsys/vicuna-7b-v1.3 holds: `config.json`, `generation_config.json`, pickled
`pytorch_model-*.bin` shards with `pytorch_model.bin.index.json`, a sentencepiece `tokenizer.model` and a
`tokenizer_config.json` naming `LlamaTokenizer`; no `tokenizer.json`, no chat template. The heads directory holds
what FasterDecoding/medusa-vicuna-7b-v1.3 holds: `medusa_lm_head.pt` (the state dict of
ModuleList[Sequential(ResBlock, Linear(hidden, vocab, bias=False))]) and a `config.json` with `medusa_num_heads`,
`medusa_num_layers` and `base_model_name_or_path`.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import sentencepiece
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from transformers import LlamaConfig, LlamaForCausalLM

from gorgon.engine.drafting.heads import MedusaHeads

VOCAB = 600
BOS_ID, EOS_ID = 1, 2
SHARD_SIZE = "200KB"  # several shards, as the 7B model has
VICUNA_TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "clean_up_tokenization_spaces": False,
    "legacy": False,
    "model_max_length": 256,
    "tokenizer_class": "LlamaTokenizer",
}
CHAT_LINES = (
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is the capital of France? ASSISTANT: The capital of France is Paris.",
    "USER: Tell me a story about a fox. ASSISTANT: Once upon a time a quick brown fox jumped over a lazy dog.",
)


def training_sentences(seed: int = 0) -> list[str]:
    """A few KB of text: chat lines and made-up words, varied enough for a 600-piece BPE vocabulary."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnoprstuvwy"
    made_up = [
        " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(8))
        for _ in range(300)
    ]
    return list(CHAT_LINES) * 10 + made_up


def write_sentencepiece_tokenizer(directory: Path) -> None:
    """Train a BPE sentencepiece model with byte fallback, as Llama's, and write Vicuna's tokenizer files."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(training_sentences()),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB,
        byte_fallback=True,
        unk_id=0,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    (directory / "tokenizer_config.json").write_text(json.dumps(VICUNA_TOKENIZER_CONFIG, indent=2))


def tiny_vicuna_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def write_bin_shards(model: LlamaForCausalLM, directory: Path) -> None:
    """Pickled `pytorch_model-*.bin` shards and their index, as Vicuna v1.3 ships them (transformers'
    save_pretrained writes safetensors only)."""
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=SHARD_SIZE
    )
    for file_name, names in split.filename_to_tensors.items():
        torch.save({name: state[name] for name in names}, directory / file_name)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def write_tiny_vicuna(directory: Path, seed: int = 0) -> LlamaForCausalLM:
    """The tiny model in Vicuna v1.3's layout under `directory`; returns the model written."""
    directory.mkdir(parents=True, exist_ok=True)
    model = tiny_vicuna_model(seed)
    model.config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    write_bin_shards(model, directory)
    write_sentencepiece_tokenizer(directory)
    return model


def faster_decoding_heads(
    hidden_size: int, vocab_size: int, num_heads: int = 5, seed: int = 1
) -> MedusaHeads:
    """Medusa-1 heads with their own projections and random (non-identity) residual blocks."""
    torch.manual_seed(seed)
    heads = MedusaHeads(hidden_size, vocab_size, num_heads, num_layers=1, own_lm_heads=True)
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.normal_(0.0, 0.2)
    return heads.eval()


def write_faster_decoding_heads(heads: MedusaHeads, directory: Path, base_model: str) -> None:
    """`medusa_lm_head.pt` and `config.json` as FasterDecoding's released heads have them."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(heads.state_dict_faster_decoding(), directory / "medusa_lm_head.pt")
    config = {
        "medusa_num_heads": heads.num_heads,
        "medusa_num_layers": heads.num_layers,
        "base_model_name_or_path": base_model,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
