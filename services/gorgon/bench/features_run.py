"""What `gorgon bench features` measures (features.py holds its flags and writes the report): the same prompts
decoded greedily with each request feature, speculation off (an engine without heads) and on (one with heads),
at every batch size, in one process.

Every (feature, mode, batch size) runs all its prompt batches once per round. A round runs them in the reverse
order of the round before, so a machine whose speed drifts over the minutes of a run slows every row alike
(over two rounds a steady drift charges every row about the same), and no row always runs first or last.
tokens/s is the median over the rounds; each row's ratio is to the baseline row of the same mode and batch size.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tqdm import tqdm

from gorgon.bench.engine_run import WARMUP_TOKENS, RunOutput, merged, prompt_groups
from gorgon.bench.engine_setup import plain_and_medusa_engines
from gorgon.engine.interface import ChatMessage, GenerationRequest, SamplingParams
from gorgon.engine.loader import LoadedModel
from gorgon.engine.medusa_engine import MedusaEngine

log = logging.getLogger(__name__)

PLAIN, MEDUSA = "plain", "medusa"
MODES = (PLAIN, MEDUSA)
BASELINE = "baseline"
LOGIT_BIAS_TOKENS = 10
LOGIT_BIAS = -1.0
"""A mild push away from ten tokens spread over the vocabulary: what the bias costs does not depend on its value."""
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "key_points": {"type": "integer"},
        "is_science": {"type": "boolean"},
    },
    "required": ["topic", "key_points", "is_science"],
    "additionalProperties": False,
}
JSON_OBJECT_REQUEST = " Answer with a JSON object."
JSON_SCHEMA_REQUEST = (
    " Answer with a JSON object holding the topic (a string), the number of key points (an integer) and whether "
    "the question is about science (a boolean)."
)

RunKey = tuple[str, str, int]
"""(feature, mode, batch size)."""


@dataclass(frozen=True, slots=True)
class Feature:
    """One row of the benchmark: the parameters of its requests, text added to every prompt (the JSON rows ask
    for JSON, as a client using response_format does), and whether each prompt runs as `batch` identical
    requests (a request with n = batch, whose prompt the engine prefills once)."""

    name: str
    description: str
    params: SamplingParams
    prompt_suffix: str = ""
    repeats_prompt: bool = False


@dataclass(frozen=True, slots=True)
class FeatureResult:
    """One feature in one mode at one batch size. `ratio_to_baseline`: tokens/s over the baseline row's of the
    same mode and batch size (None without one); `identical_to_plain`: for Medusa, whether every round's greedy
    tokens equal the plain engine's with the same parameters (None for plain)."""

    feature: str
    mode: str
    batch: int
    tokens_per_s: float
    ratio_to_baseline: float | None
    tokens_per_step: float
    tokens_per_sequence: float
    identical_to_plain: bool | None


@dataclass(frozen=True, slots=True)
class FeaturesReport:
    """Everything `gorgon bench features` measured; `--json` prints it field by field. `features`: each row's
    name and what its requests ask for, in the order the table shows them."""

    model: str
    device: str
    dtype: str
    prompts: int
    max_new_tokens: int
    rounds: int
    features: dict[str, str]
    results: list[FeatureResult]


def feature_rows(vocab_size: int, max_new_tokens: int) -> tuple[Feature, ...]:
    """The rows, baseline first: greedy decoding of up to `max_new_tokens` tokens plus one feature each."""
    base = SamplingParams(max_new_tokens=max_new_tokens)
    json_schema = {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}
    return (
        Feature(BASELINE, "baseline (greedy)", base),
        Feature("logprobs", "logprobs=5", replace(base, logprobs=5)),
        Feature(
            "penalties",
            "presence + frequency penalty 0.5",
            replace(base, presence_penalty=0.5, frequency_penalty=0.5),
        ),
        Feature("repetition_penalty", "repetition_penalty 1.2", replace(base, repetition_penalty=1.2)),
        Feature(
            "logit_bias",
            f"logit_bias, {LOGIT_BIAS_TOKENS} tokens",
            replace(base, logit_bias=spread_logit_bias(vocab_size)),
        ),
        Feature(
            "json_object",
            "json_object",
            replace(base, response_format=json.dumps({"type": "json_object"})),
            JSON_OBJECT_REQUEST,
        ),
        Feature(
            "json_schema",
            f"json_schema, {len(ANSWER_SCHEMA['properties'])} properties",
            replace(base, response_format=json.dumps({"type": "json_schema", "json_schema": json_schema})),
            JSON_SCHEMA_REQUEST,
        ),
        Feature("n", "n = batch", base, repeats_prompt=True),
    )


def spread_logit_bias(vocab_size: int) -> tuple[tuple[int, float], ...]:
    """LOGIT_BIAS on LOGIT_BIAS_TOKENS token ids evenly spread over the vocabulary (the middles of equal slices,
    so neither end's special tokens)."""
    return tuple(
        ((2 * index + 1) * vocab_size // (2 * LOGIT_BIAS_TOKENS), LOGIT_BIAS)
        for index in range(LOGIT_BIAS_TOKENS)
    )


def feature_groups(feature: Feature, prompts: Sequence[list[int]], batch: int) -> list[list[list[int]]]:
    """The batches a feature runs at one batch size: every prompt once in batches of `batch` (engine_run's
    prompt_groups), or for the n row every prompt as its own batch of `batch` copies (none at batch 1)."""
    if not feature.repeats_prompt:
        return prompt_groups(prompts, batch)
    return [[prompt] * batch for prompt in prompts] if batch > 1 else []


def run_order(keys: Sequence[RunKey], rounds: int) -> list[tuple[int, RunKey]]:
    """(round, key) in the order they run: every key once per round, every other round in reverse."""
    return [
        (round_index, key)
        for round_index in range(rounds)
        for key in (keys if round_index % 2 == 0 else list(reversed(keys)))
    ]


def decode_batch(engine: MedusaEngine, prompts: Sequence[list[int]], params: SamplingParams) -> RunOutput:
    """Every prompt as one request with `params`, added together and run to their ends; tokens per step (engine
    events, the prefill's included) averaged over the sequences. A request that fails fails the benchmark."""
    request_ids = [f"bench-{index}" for index in range(len(prompts))]
    started = time.perf_counter()
    for request_id, prompt in zip(request_ids, prompts, strict=True):
        engine.add(GenerationRequest(request_id, tuple(prompt), params))
    tokens: dict[str, list[int]] = {request_id: [] for request_id in request_ids}
    steps = dict.fromkeys(request_ids, 0)
    while engine.num_active:
        for event in engine.step():
            if event.error is not None:
                raise RuntimeError(f"request {event.request_id} failed: {event.error}")
            tokens[event.request_id].extend(event.token_ids)
            steps[event.request_id] += 1
    seconds = time.perf_counter() - started
    per_step = statistics.fmean(len(tokens[request_id]) / steps[request_id] for request_id in request_ids)
    return RunOutput(list(tokens.values()), seconds, per_step)


def ratio_to_baseline(rates: Mapping[RunKey, float], key: RunKey) -> float | None:
    """tokens/s of `key` over the baseline's of the same mode and batch size; None without a baseline rate."""
    _, mode, batch = key
    baseline = rates.get((BASELINE, mode, batch))
    return rates[key] / baseline if baseline else None


def summarise(outputs: Mapping[RunKey, Sequence[RunOutput]]) -> list[FeatureResult]:
    """One result per key, in the keys' order: median tokens/s over the rounds, its ratio to the baseline, mean
    tokens per step and per sequence; Medusa identical to plain only if every round was."""
    rates = {key: statistics.median(run.tokens_per_s for run in runs) for key, runs in outputs.items()}
    results = []
    for key, runs in outputs.items():
        feature, mode, batch = key
        plain_runs = outputs.get((feature, PLAIN, batch))
        identical = (
            None
            if mode == PLAIN or plain_runs is None
            else all(run.token_ids == plain.token_ids for run, plain in zip(runs, plain_runs, strict=True))
        )
        results.append(
            FeatureResult(
                feature=feature,
                mode=mode,
                batch=batch,
                tokens_per_s=rates[key],
                ratio_to_baseline=ratio_to_baseline(rates, key),
                tokens_per_step=statistics.fmean(run.tokens_per_step for run in runs),
                tokens_per_sequence=statistics.fmean(len(tokens) for run in runs for tokens in run.token_ids),
                identical_to_plain=identical,
            )
        )
    return results


def load_engines(args: argparse.Namespace) -> tuple[LoadedModel, dict[str, MedusaEngine]]:
    """The model the flags name, loaded once, under the plain engine and the Medusa one, by mode."""
    loaded, plain, medusa = plain_and_medusa_engines(args)
    return loaded, {PLAIN: plain, MEDUSA: medusa}


def encode_prompts(
    engine: MedusaEngine, rows: Sequence[Feature], prompts: Sequence[str]
) -> dict[str, list[list[int]]]:
    """Each row's prompts as chat token ids, its suffix added to every one."""
    by_suffix = {
        suffix: [engine.encode([ChatMessage("user", prompt + suffix)]) for prompt in prompts]
        for suffix in {row.prompt_suffix for row in rows}
    }
    return {row.name: by_suffix[row.prompt_suffix] for row in rows}


def warm_up(
    engines: Mapping[str, MedusaEngine], rows: Sequence[Feature], encoded: Mapping[str, list[list[int]]]
) -> None:
    """A few tokens of every row on both engines first: the first call of a path (a grammar's token table, the
    shared prefill's copies, a shape's kernels) costs more than the ones measured after it."""
    for engine in engines.values():
        for row in rows:
            copies = 2 if row.repeats_prompt else 1
            decode_batch(
                engine, [encoded[row.name][0]] * copies, replace(row.params, max_new_tokens=WARMUP_TOKENS)
            )


def measure(
    engines: Mapping[str, MedusaEngine],
    rows: Sequence[Feature],
    groups: Mapping[tuple[str, int], list[list[list[int]]]],
    rounds: int,
) -> dict[RunKey, list[RunOutput]]:
    """Every (feature, mode, batch size) over all its batches, once per round in run_order; one output per key
    and round."""
    params = {row.name: row.params for row in rows}
    keys = [(name, mode, batch) for (name, batch), batches in groups.items() if batches for mode in MODES]
    outputs: dict[RunKey, list[RunOutput]] = {key: [] for key in keys}
    order = run_order(keys, rounds)
    total = sum(len(groups[(feature, batch)]) for _, (feature, _, batch) in order)
    with tqdm(total=total, desc="bench features", unit="batch") as progress:
        for _, key in order:
            feature, mode, batch = key
            progress.set_postfix_str(f"{feature} {mode} batch {batch}")
            runs = []
            for prompts in groups[(feature, batch)]:
                runs.append(decode_batch(engines[mode], prompts, params[feature]))
                progress.update()
            outputs[key].append(merged(runs))
    return outputs


def run_features(
    args: argparse.Namespace,
    *,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_sizes: Sequence[int],
    rounds: int,
) -> FeaturesReport:
    """Load the model once, warm both engines up on every row, then measure every row at every batch size."""
    loaded, engines = load_engines(args)
    rows = feature_rows(engines[PLAIN].parts.vocab_size, max_new_tokens)
    encoded = encode_prompts(engines[PLAIN], rows, prompts)
    warm_up(engines, rows, encoded)
    if max(batch_sizes) > len(prompts):
        log.warning(
            "batches larger than the %d prompts repeat prompts, whose prefill is shared", len(prompts)
        )
    groups = {
        (row.name, batch): feature_groups(row, encoded[row.name], batch)
        for batch in batch_sizes
        for row in rows
    }
    outputs = measure(engines, rows, groups, rounds)
    return FeaturesReport(
        model=loaded.name,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        prompts=len(prompts),
        max_new_tokens=max_new_tokens,
        rounds=rounds,
        features={row.name: row.description for row in rows},
        results=summarise(outputs),
    )
