"""How a row picks tokens and accepts drafts: greedy (the argmax; a draft is accepted when it is the argmax) or
sampled (temperature and top_p from a per-request generator; a draft is accepted by typical acceptance)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gorgon.engine.config import DEFAULT_TYPICAL_ALPHA, DEFAULT_TYPICAL_EPSILON


@dataclass(frozen=True, slots=True)
class RowSampling:
    """How one row picks tokens. temperature == 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    speculative: bool = True
    generator: torch.Generator | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


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
    """softmax(logits / T) with the tail beyond top_p cumulative mass removed (renormalised). [V] float32."""
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p
    sorted_probs[outside] = 0.0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs) / sorted_probs.sum()


def choose_next_tokens(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """logits [B, V] at each row's last accepted node -> next token per row [B]."""
    tokens = greedy_tokens(logits)
    for row, sampling in enumerate(rows):
        if not sampling.greedy:
            tokens[row] = sample_token(logits[row], sampling)
    return tokens


def typical_accept(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, rule: TypicalAcceptance
) -> torch.Tensor:
    """logits [N, V] at parent nodes, tokens [N] drafted children -> accepted [N] bool."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
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
