"""What `gorgon bench engine` measures (engine.py holds its flags and prints the report): HF generate, the
engine's plain path and its Medusa path on the same prompts, batch by batch in alternating order."""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from tqdm import tqdm

from gorgon.bench.engine_setup import plain_and_medusa_engines
from gorgon.engine.interface import ChatMessage, GenerationRequest, SamplingParams
from gorgon.engine.loader import LoadedModel
from gorgon.engine.medusa_engine import MedusaEngine

log = logging.getLogger(__name__)

WARMUP_TOKENS = 8


@dataclass(frozen=True, slots=True)
class BenchResult:
    """One mode at one batch size."""

    mode: str
    batch: int
    tokens_per_s: float
    tokens_per_step: float
    identical_to_plain: bool | None
    shape_steps: dict[str, int] = field(
        default_factory=dict
    )  # engine steps per speculation shape, all rounds


@dataclass(frozen=True, slots=True)
class EngineReport:
    """Everything `gorgon bench engine` measured; `--json` prints it field by field."""

    model: str
    device: str
    dtype: str
    results: list[BenchResult]


class CausalLM(Protocol):
    """What HF generate is called on: a transformers causal LM (returning token ids, not a dict)."""

    def generate(self, **kwargs: Any) -> torch.Tensor: ...


@dataclass(frozen=True, slots=True)
class RunOutput:
    token_ids: list[list[int]]
    seconds: float
    tokens_per_step: float
    shape_steps: Counter[str] = field(default_factory=Counter)  # engine steps per speculation shape

    @property
    def tokens_per_s(self) -> float:
        return sum(len(tokens) for tokens in self.token_ids) / self.seconds


def run_engine(engine: MedusaEngine, prompts: Sequence[list[int]], max_new_tokens: int) -> RunOutput:
    """Generate greedily for all prompts as one batch; tokens per forward pass averaged over sequences."""
    params = SamplingParams(max_new_tokens=max_new_tokens)
    shapes_before = Counter(engine.scheduler.selector.steps_by_shape)
    started = time.perf_counter()
    for index, prompt in enumerate(prompts):
        engine.add(GenerationRequest(f"bench-{index}", tuple(prompt), params))
    tokens: dict[str, list[int]] = {f"bench-{index}": [] for index in range(len(prompts))}
    steps = dict.fromkeys(tokens, 0)
    while engine.num_active:
        for event in engine.step():
            tokens[event.request_id].extend(event.token_ids)
            steps[event.request_id] += 1
    seconds = time.perf_counter() - started
    per_step = sum(len(tokens[key]) / steps[key] for key in tokens) / len(tokens)
    return RunOutput(
        list(tokens.values()), seconds, per_step, engine.scheduler.selector.steps_by_shape - shapes_before
    )


def run_hf_generate(loaded: LoadedModel, prompts: Sequence[list[int]], max_new_tokens: int) -> RunOutput:
    """HF `generate`, greedy, left-padded batch, same model and dtype; tokens counted up to each row's EOS."""
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    longest = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, longest - len(prompt) :] = 1
    eos = loaded.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    model = cast(CausalLM, loaded.model)  # the loader loads causal LMs only
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(loaded.device),
            attention_mask=attention_mask.to(loaded.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    seconds = time.perf_counter() - started
    generated = [_until_eos(row[longest:].tolist(), eos_ids) for row in output]
    return RunOutput(generated, seconds, 1.0)


def prompt_groups(prompts: Sequence[list[int]], batch: int) -> list[list[list[int]]]:
    """The batches a mode runs at one batch size: every prompt once, in consecutive batches of `batch` (the last
    one filled up from the start of the set); a batch larger than the set cycles through it."""
    if batch >= len(prompts):
        return [[prompts[index % len(prompts)] for index in range(batch)]]
    count = -(-len(prompts) // batch)
    return [
        [prompts[(start + row) % len(prompts)] for row in range(batch)]
        for start in range(0, count * batch, batch)
    ]


def merged(outputs: Sequence[RunOutput]) -> RunOutput:
    """One mode's runs over the batches of one batch size as one output: every sequence's tokens, the summed time,
    tokens per step averaged over all sequences, the shapes' steps summed."""
    sequences = sum(len(output.token_ids) for output in outputs)
    return RunOutput(
        [tokens for output in outputs for tokens in output.token_ids],
        sum(output.seconds for output in outputs),
        sum(output.tokens_per_step * len(output.token_ids) for output in outputs) / sequences,
        sum((output.shape_steps for output in outputs), Counter()),
    )


def _until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: index + 1]
    return tokens


def _interleaved_rounds(
    runners: dict[str, Callable[[Sequence[list[int]]], RunOutput]],
    groups: Sequence[Sequence[list[int]]],
    rounds: int,
    on_run: Callable[[], object],
) -> dict[str, list[RunOutput]]:
    """Every runner on every batch, `rounds` times, one output per mode and round. The modes take turns batch by
    batch, in reverse order on every other batch and round, so that a machine whose speed drifts over the minutes
    of a run slows every mode alike, and no mode always runs first (a cold cache) or last. Running each mode over
    all its batches before the next would let that drift skew the ratios between the modes."""
    outputs: dict[str, list[RunOutput]] = {mode: [] for mode in runners}
    for round_index in range(rounds):
        runs: dict[str, list[RunOutput]] = {mode: [] for mode in runners}
        for group_index, group in enumerate(groups):
            forward = (round_index + group_index) % 2 == 0
            for mode in list(runners) if forward else list(reversed(runners)):
                runs[mode].append(runners[mode](group))
                on_run()
        for mode, mode_runs in runs.items():
            outputs[mode].append(merged(mode_runs))
    return outputs


def _batch_results(batch: int, outputs: dict[str, list[RunOutput]]) -> list[BenchResult]:
    """One result per mode: median tokens/s over the rounds; Medusa identical only if every round was."""
    results = []
    for mode, runs in outputs.items():
        identical = (
            all(run.token_ids == plain.token_ids for run, plain in zip(runs, outputs["plain"], strict=True))
            if mode == "medusa"
            else None
        )
        results.append(
            BenchResult(
                mode,
                batch,
                statistics.median(run.tokens_per_s for run in runs),
                statistics.fmean(run.tokens_per_step for run in runs),
                identical,
                dict(sum((run.shape_steps for run in runs), Counter())),
            )
        )
    return results


def run_benchmark(
    args: argparse.Namespace, *, max_new_tokens: int, batch_sizes: Sequence[int], prompts: Sequence[str]
) -> EngineReport:
    """Load the model once, warm both engines up, then run the three modes on every batch size."""
    loaded, plain_engine, medusa_engine = plain_and_medusa_engines(args)
    encoded = [plain_engine.encode([ChatMessage("user", prompt)]) for prompt in prompts]
    for engine in (plain_engine, medusa_engine):
        run_engine(engine, encoded[:1], WARMUP_TOKENS)
    rounds = args.rounds
    results: list[BenchResult] = []
    groups_per_batch = {batch: prompt_groups(encoded, batch) for batch in batch_sizes}
    total_runs = 3 * rounds * sum(len(groups) for groups in groups_per_batch.values())
    with tqdm(total=total_runs, desc="bench engine", unit="run") as progress:
        for batch, groups in groups_per_batch.items():
            runners = {
                "hf_generate": lambda prompts: run_hf_generate(loaded, prompts, max_new_tokens),
                "plain": lambda prompts: run_engine(plain_engine, prompts, max_new_tokens),
                "medusa": lambda prompts: run_engine(medusa_engine, prompts, max_new_tokens),
            }
            outputs = _interleaved_rounds(runners, groups, rounds, progress.update)
            results += _batch_results(batch, outputs)
            log.info(
                "batch %d: hf identical to plain: %s",
                batch,
                outputs["hf_generate"][0].token_ids == outputs["plain"][0].token_ids,
            )
    return EngineReport(
        model=loaded.name,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        results=results,
    )
