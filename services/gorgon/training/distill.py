"""Self-distillation data: the base model's own greedy responses, with the hidden states that produced them.

A Medusa head reads the final hidden state h_t (the input of the lm_head) at the position that produced
response token r_j and learns r_{j+1+k}. The responses come from the serving engine itself (plain greedy
decoding, continuous batching, the serving dtype); capturing h_t while it generates (a hook on the final norm)
costs nothing extra and gives exactly the hidden states and trajectories the heads see when serving.

Data is written in shards of a few generation batches each (`shard-00012.safetensors`): `hidden` [T, H] float16,
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
from gorgon.engine.config import EngineSettings
from gorgon.engine.interface import GenerationRequest, SamplingParams, TokenEvent
from gorgon.engine.loader import LoadedModel
from gorgon.engine.medusa_engine import MedusaEngine
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
def captured_hidden_states(final_norm: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the output of `final_norm` in every forward call made inside the block ([B, S, H] each)."""
    outputs: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        outputs.append(output.detach())

    handle = final_norm.register_forward_hook(keep)
    try:
        yield outputs
    finally:
        handle.remove()


def chat_prompt_ids(base: BaseModel, instruction: str) -> list[int]:
    """Token ids of a one-turn chat ending with the assistant's turn opener, as the API would build them."""
    messages = [{"role": "user", "content": instruction}]
    text = base.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return base.tokenizer(text, add_special_tokens=False).input_ids


def generate_greedy(
    base: BaseModel, prompts: Sequence[Sequence[int]], max_new_tokens: int, max_batch_size: int | None = None
) -> Sequences:
    """Greedy responses from the serving engine (plain decoding, continuous batching), with the hidden state
    behind each token. Rows leave the batch at their stop token and waiting prompts take their place."""
    engine = _plain_engine(base, max_batch_size or len(prompts))
    params = SamplingParams(max_new_tokens=max_new_tokens, use_speculative=False)
    for index, prompt in enumerate(prompts):
        engine.add(GenerationRequest(str(index), tuple(prompt), params))
    recorder = _ResponseRecorder(len(prompts), [len(prompt) for prompt in prompts])
    # The engine runs its own (possibly prepacked) copy of the decoder: hook that copy's final norm.
    with (
        captured_hidden_states(engine.parts.decoder.get_submodule("norm")) as forwards,
        torch.inference_mode(),
    ):
        while engine.num_active:
            events = engine.step()
            recorder.add_step(list(forwards), events)
            forwards.clear()
    return recorder.sequences()


def _plain_engine(base: BaseModel, max_batch_size: int) -> MedusaEngine:
    """The serving engine on the base model, without heads or DeepSpeed."""
    model = base.model
    loaded = LoadedModel(
        model, model, base.tokenizer, base.name, model.device, model.dtype, uses_deepspeed=False
    )
    settings = EngineSettings(
        speculation=False,
        use_deepspeed=False,
        max_batch_size=max_batch_size,
        device="cuda" if model.device.type == "cuda" else "cpu",
        # The recorder pairs each forward's rows with that step's events: a prompt is prefilled whole.
        prefill_chunk_tokens=model.config.max_position_embeddings,
    )
    return MedusaEngine(loaded, None, settings)


class _ResponseRecorder:
    """Pairs each emitted token with the final hidden state of the forward that chose it.

    A step is a prefill (one forward per group of admitted rows, hidden [B_group, S, H]; a row's first token
    comes from its last prompt position) or a plain decode step (one forward, hidden [B, T, H]; query 0 of row b
    chose row b's token). The engine emits one event per row, in the order of the forwards' rows.
    """

    def __init__(self, count: int, prompt_lengths: list[int]) -> None:
        self.prompt_lengths = prompt_lengths
        self.hidden: list[list[torch.Tensor]] = [[] for _ in range(count)]
        self.tokens: list[list[int]] = [[] for _ in range(count)]

    def add_step(self, forwards: Sequence[torch.Tensor], events: Sequence[TokenEvent]) -> None:
        is_prefill = all(event.completion_tokens == len(event.token_ids) for event in events)
        row_states = [hidden[row] for hidden in forwards for row in range(hidden.shape[0])]
        for states, event in zip(row_states, events, strict=True):
            index = int(event.request_id)
            position = self.prompt_lengths[index] - 1 if is_prefill else 0
            if event.token_ids:
                self.hidden[index].append(states[position].float())
                self.tokens[index].extend(event.token_ids)

    def sequences(self) -> Sequences:
        return Sequences(
            hidden=torch.cat([torch.stack(rows) for rows in self.hidden]).to(torch.float16),
            response_ids=torch.tensor([token for row in self.tokens for token in row], dtype=torch.int32),
            lengths=torch.tensor([len(row) for row in self.tokens], dtype=torch.int32),
        )


def teacher_forced(base: BaseModel, chunks: Sequence[Sequence[int]]) -> Sequences:
    """Hidden states of text chunks read in one forward each: position p's hidden state produced token p+1."""
    parts = []
    for chunk in chunks:
        ids = torch.tensor([list(chunk)])
        with captured_hidden_states(base.final_norm) as steps, torch.inference_mode():
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
