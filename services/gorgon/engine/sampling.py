"""How a row picks tokens and accepts drafts: greedy (the argmax; a draft is accepted when it is the argmax) or
sampled (temperature and top_p from a per-request generator; a draft is accepted by typical acceptance).
Both read the row's processed logits (engine/logits_processing.py): a row with processors chooses and accepts on
its adjusted logits, a row without on the model's own.

Every value the API admits works: temperatures below GREEDY_BELOW_TEMPERATURE decode greedily (as vLLM does),
any top_p in (0, 1] keeps at least the most likely token, and every int64 seed maps to a generator seed. A row
whose sampling still fails (non-finite logits) is reported by `choose_next_tokens`, so the engine fails that
request alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gorgon.core.limits import GREEDY_BELOW_TEMPERATURE
from gorgon.engine.config import DEFAULT_TYPICAL_ALPHA, DEFAULT_TYPICAL_EPSILON
from gorgon.engine.logits_processing import LogitsProcessor, adjust_logits

GENERATOR_SEED_RANGE = 2**64
"""torch.Generator.manual_seed takes seeds in [0, 2^64)."""


def is_greedy(temperature: float) -> bool:
    return temperature < GREEDY_BELOW_TEMPERATURE


def generator_seed(seed: int) -> int:
    """A request's seed (the API admits int64) as a generator seed: negative seeds map to their two's complement,
    so every seed is accepted, deterministic, and distinct from every other."""
    return seed % GENERATOR_SEED_RANGE


def row_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """The generator of one sampled row: seeded by the request's seed, or from the OS (never the global RNG)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(generator_seed(seed))
    return generator


@dataclass(frozen=True, slots=True)
class RowSampling:
    """How one row picks tokens. A temperature below GREEDY_BELOW_TEMPERATURE (0 included) is greedy.
    `processors` adjust its logits before any choice (none: the model's logits as they are); `logprobs`: how many
    top alternatives its emitted tokens report with their log-probabilities (None: no log-probabilities)."""

    temperature: float = 0.0
    top_p: float = 1.0
    speculative: bool = True
    generator: torch.Generator | None = None
    processors: tuple[LogitsProcessor, ...] = ()
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return is_greedy(self.temperature)


@dataclass(frozen=True, slots=True)
class TypicalAcceptance:
    """Accept x when p(x) > min(epsilon, alpha * exp(-H(p))); defaults live in engine/config.py."""

    epsilon: float = DEFAULT_TYPICAL_EPSILON
    alpha: float = DEFAULT_TYPICAL_ALPHA


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """The argmax over the last dimension (the first index among equal maxima), computed as `max(-1).indices`:
    the same tokens, but on CPU several times faster than `argmax` in bf16."""
    return logits.max(-1).indices


def sample_token(logits: torch.Tensor, sampling: RowSampling) -> int:
    """One token from logits [V] with temperature and nucleus (top_p) filtering."""
    probs = filtered_probabilities(logits, sampling)
    return int(torch.multinomial(probs, 1, generator=sampling.generator))


def filtered_probabilities(logits: torch.Tensor, sampling: RowSampling) -> torch.Tensor:
    """softmax(logits / T) with the tail beyond top_p cumulative mass removed (renormalised). [V] float32.

    Of tokens with equal probability the lower id ranks first (a stable sort), as greedy decoding picks the first
    of equal maxima: bf16 logits often tie exactly, and the smallest top_p must then keep greedy's token."""
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(descending=True, stable=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p
    sorted_probs[outside] = 0.0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs) / sorted_probs.sum()


Continuations = Callable[[int], Sequence[Sequence[int]]]
"""Row index -> the continuation of each of the row's N positions (see LogitsProcessor.adjust)."""


def right_after_committed(row: int) -> Sequence[Sequence[int]]:
    """The continuations of a single position right after a row's committed output (prefill, plain steps)."""
    return ((),)


def processed_logits(
    logits: torch.Tensor, continuations: Continuations, rows: Sequence[RowSampling]
) -> tuple[torch.Tensor, dict[int, str]]:
    """logits [B, N, V] -> the same tensor when no row has processors; else a float32 copy in which every row with
    processors has its N positions adjusted (rows without keep their values exactly: float32 holds every bf16
    value and greedy, sampled and typical choices all read float32). Also the rows whose processors failed
    (row -> why): their logits stay raw, placeholders the engine never emits."""
    if not any(row.processors for row in rows):
        return logits, {}
    adjusted = logits.to(torch.float32, copy=True)
    failures: dict[int, str] = {}
    for index, row in enumerate(rows):
        if not row.processors:
            continue
        try:
            adjusted[index] = adjust_logits(row.processors, adjusted[index], continuations(index))
        except Exception as exc:  # one row's failure must not end the other rows' step
            failures[index] = f"logits processing failed: {exc}"
            adjusted[index] = logits[index]
    return adjusted, failures


def choose_next_tokens(
    logits: torch.Tensor, rows: Sequence[RowSampling]
) -> tuple[torch.Tensor, dict[int, str]]:
    """logits [B, V] at each row's last accepted node -> next token per row [B], and the rows whose sampling
    failed (row -> why): their token is the argmax, a placeholder the engine never emits."""
    tokens = greedy_tokens(logits)
    failures: dict[int, str] = {}
    for row, sampling in enumerate(rows):
        if sampling.greedy:
            continue
        try:
            tokens[row] = sample_token(logits[row], sampling)
        except Exception as exc:  # one row's failure must not end the other rows' step
            failures[row] = f"sampling failed: {exc}"
    return tokens, failures


def typical_accept(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, rule: TypicalAcceptance
) -> torch.Tensor:
    """logits [N, V] at parent nodes, tokens [N] drafted children -> accepted [N] bool."""
    probs = torch.softmax(logits.float() / max(temperature, GREEDY_BELOW_TEMPERATURE), dim=-1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum(-1)
    threshold = torch.minimum(torch.full_like(entropy, rule.epsilon), rule.alpha * torch.exp(-entropy))
    return probs.gather(-1, tokens[:, None])[:, 0] > threshold


def node_acceptance(
    logits: torch.Tensor,
    candidates: torch.Tensor,
    parents: torch.Tensor,
    rows: Sequence[RowSampling],
    rule: TypicalAcceptance,
) -> torch.Tensor:
    """[B, T] bool: node i's token is accepted after its parent parents[i] (node 0: True). Greedy rows accept
    the base model's argmax, sampled rows by typical acceptance, rows that do not speculate nothing."""
    accepted = candidates == greedy_tokens(logits)[:, parents]
    for row, sampling in enumerate(rows):
        if not sampling.speculative:
            accepted[row] = False
        elif not sampling.greedy:
            accepted[row] = typical_accept(logits[row, parents], candidates[row], sampling.temperature, rule)
    accepted[:, 0] = True
    return accepted
