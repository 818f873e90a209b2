"""Self-distillation data: the base model's own greedy responses, with the hidden states that produced them.

A Medusa head reads the final hidden state h_t (the input of the lm_head) at the position that produced
response token r_j and learns r_{j+1+k}. Capturing h_t while the model generates (a hook on the final norm)
costs nothing extra and gives exactly the hidden states the heads see when serving greedy requests.

Data is written in shards of one generation batch each (`shard-00012.safetensors`): `hidden` [T, H] float16,
`response_ids` [T] int32 and `lengths` [N] int32 (T = sum of lengths). Shards already on disk are skipped, so
an interrupted run resumes where it stopped; a manifest pins the settings the shards were made with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from gorgon.core.errors import ConfigurationError
from gorgon.training.base_model import BaseModel

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True, slots=True)
class DistillSettings:
    """Everything that decides the content of shard i; a resumed run must use the same values.

    The number of sequences is not among them: the prompt order is fixed, so a larger run reuses the shards of
    a smaller one and only a shorter last shard is made again.
    """

    model_name: str
    source: str
    max_new_tokens: int
    batch_size: int


@dataclass(frozen=True, slots=True)
class Sequences:
    """Flattened training positions: row i of `hidden` produced `response_ids[i]`.

    hidden: [T, H]; response_ids: [T]; lengths: [N] with sum(lengths) == T (one entry per response).
    """

    hidden: torch.Tensor
    response_ids: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    @classmethod
    def concatenate(cls, parts: Sequence[Sequences]) -> Sequences:
        return cls(
            hidden=torch.cat([part.hidden for part in parts]),
            response_ids=torch.cat([part.response_ids for part in parts]),
            lengths=torch.cat([part.lengths for part in parts]),
        )


@contextmanager
def captured_hidden_states(base: BaseModel) -> Iterator[list[torch.Tensor]]:
    """Collect the final-norm output of every forward call made inside the block ([B, S, H] each)."""
    outputs: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        outputs.append(output.detach())

    handle = base.final_norm.register_forward_hook(keep)
    try:
        yield outputs
    finally:
        handle.remove()


def chat_prompt_ids(base: BaseModel, instruction: str) -> list[int]:
    """Token ids of a one-turn chat ending with the assistant's turn opener, as the API would build them."""
    messages = [{"role": "user", "content": instruction}]
    text = base.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return base.tokenizer(text, add_special_tokens=False).input_ids


def _response_length(generated: list[int], stop_ids: set[int]) -> int:
    """Tokens up to and including the first stop token (all of them if none was produced)."""
    for index, token_id in enumerate(generated):
        if token_id in stop_ids:
            return index + 1
    return len(generated)


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def generate_greedy(base: BaseModel, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Sequences:
    """Greedy responses to a batch of prompts (left padded), with the hidden state behind each token."""
    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    input_ids, attention_mask = _left_padded(prompts, pad_id)
    with captured_hidden_states(base) as steps, torch.inference_mode():
        generated = base.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
    # step_hidden: [B, G, H] — the last position of each forward call produced generated token g
    step_hidden = torch.cat([step[:, -1:, :] for step in steps], dim=1)
    new_tokens = generated[:, input_ids.shape[1] :]
    return _trim_rows(step_hidden, new_tokens, base.stop_token_ids)


def _trim_rows(step_hidden: torch.Tensor, new_tokens: torch.Tensor, stop_ids: set[int]) -> Sequences:
    hidden_rows, id_rows, lengths = [], [], []
    for row in range(new_tokens.shape[0]):
        length = _response_length(new_tokens[row].tolist(), stop_ids)
        hidden_rows.append(step_hidden[row, :length])
        id_rows.append(new_tokens[row, :length])
        lengths.append(length)
    return Sequences(
        hidden=torch.cat(hidden_rows).to(torch.float16),
        response_ids=torch.cat(id_rows).to(torch.int32),
        lengths=torch.tensor(lengths, dtype=torch.int32),
    )


def teacher_forced(base: BaseModel, chunks: Sequence[Sequence[int]]) -> Sequences:
    """Hidden states of text chunks read in one forward each: position p's hidden state produced token p+1."""
    parts = []
    for chunk in chunks:
        ids = torch.tensor([list(chunk)])
        with captured_hidden_states(base) as steps, torch.inference_mode():
            base.model(input_ids=ids)
        parts.append(
            Sequences(
                hidden=steps[0][0, :-1].to(torch.float16),
                response_ids=ids[0, 1:].to(torch.int32),
                lengths=torch.tensor([ids.shape[1] - 1], dtype=torch.int32),
            )
        )
    return Sequences.concatenate(parts)


def text_file_chunks(base: BaseModel, path: Path, chunk_tokens: int) -> list[list[int]]:
    """A text file cut into consecutive chunks of `chunk_tokens` tokens (a shorter last one is dropped)."""
    if not path.is_file():
        raise ConfigurationError(f"text file not found: {path}")
    ids = base.tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False).input_ids
    chunks = [
        ids[start : start + chunk_tokens] for start in range(0, len(ids) - chunk_tokens + 1, chunk_tokens)
    ]
    if not chunks:
        raise ConfigurationError(f"{path} holds fewer than {chunk_tokens} tokens; nothing to train on")
    return chunks


def _check_manifest(directory: Path, settings: DistillSettings) -> None:
    manifest = directory / MANIFEST_NAME
    wanted = asdict(settings)
    if manifest.exists():
        found = json.loads(manifest.read_text())
        if found != wanted:
            raise ConfigurationError(
                f"{directory} holds data made with other settings ({found}); "
                f"use another --work-dir or delete it to regenerate"
            )
        return
    directory.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(wanted, indent=2) + "\n")


def build_shards(
    directory: Path,
    settings: DistillSettings,
    items: Sequence,
    make_batch: Callable[[Sequence], Sequences],
    description: str,
) -> Sequences:
    """Run `make_batch` over `items` in batches, one shard per batch, skipping shards already written."""
    _check_manifest(directory, settings)
    batches = [
        items[start : start + settings.batch_size] for start in range(0, len(items), settings.batch_size)
    ]
    parts = []
    for index, batch in enumerate(tqdm(batches, desc=description, unit="batch")):
        path = directory / f"shard-{index:05d}.safetensors"
        part = load_sequences(path) if path.exists() else None
        if part is None or part.lengths.numel() != len(batch):
            part = make_batch(batch)
            temporary = path.with_suffix(".tmp")
            save_file(asdict_tensors(part), str(temporary))
            temporary.rename(path)
        parts.append(part)
    return Sequences.concatenate(parts)


def asdict_tensors(sequences: Sequences) -> dict[str, torch.Tensor]:
    return {
        "hidden": sequences.hidden.contiguous(),
        "response_ids": sequences.response_ids.contiguous(),
        "lengths": sequences.lengths.contiguous(),
    }


def load_sequences(path: Path) -> Sequences:
    tensors = load_file(str(path))
    return Sequences(
        hidden=tensors["hidden"], response_ids=tensors["response_ids"], lengths=tensors["lengths"]
    )
