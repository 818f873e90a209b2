"""Per-row logits processors: what a request's parameters do to the model's logits before a token is chosen or a
draft accepted (penalties, logit bias, min_tokens; structured output's grammar, engine/grammar.py, implements the
same protocol).

A processor sees the logits of one row at the N positions of one step: after prefill the last prompt position, in
a plain step the row's one new position, in a speculative step every tree node. Position i's `continuation` is what
the row would have generated between its committed output and the token chosen at i: the drafted tokens along i's
path (node 0, the root, was emitted last step, so its continuation is empty). A processor therefore answers "what
would plain decoding have done here", and greedy speculative output equals plain greedy output with the same
processors. After the step, `commit` hands it the tokens the row emitted.

A row with default parameters has no processors: its logits are never copied or touched
(sampling.processed_logits). The engine commits each event's kept tokens (engine/medusa_engine.py); a processor
that raises, in `adjust` or in `commit`, fails its row alone. The order follows vLLM: logit bias, then min_tokens'
mask, then repetition, presence and frequency penalties.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import torch

from gorgon.engine.interface import SamplingParams


class LogitsProcessor(Protocol):
    def adjust(self, logits: torch.Tensor, continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        """logits [N, V] float at N positions of one row in this step; continuations[i] = the tokens after the
        row's committed output up to and including position i's own token (empty for the position right after
        what is committed). Returns adjusted logits [N, V] (a new tensor or the input modified in place)."""
        ...

    def commit(self, tokens: Sequence[int]) -> None:
        """The tokens the row emitted this step, in order (they join the committed output)."""
        ...


def adjust_logits(
    processors: Sequence[LogitsProcessor], logits: torch.Tensor, continuations: Sequence[Sequence[int]]
) -> torch.Tensor:
    """logits [N, V] float through every processor in order."""
    for processor in processors:
        logits = processor.adjust(logits, continuations)
    return logits


def commit_tokens(processors: Sequence[LogitsProcessor], tokens: Sequence[int]) -> None:
    for processor in processors:
        processor.commit(tokens)


def sampling_processors(
    params: SamplingParams,
    prompt_ids: Sequence[int],
    *,
    eos_token_ids: Collection[int],
    vocab_size: int,
    device: torch.device,
) -> list[LogitsProcessor]:
    """The processors `params` ask for, in vLLM's order; empty for default parameters."""
    processors: list[LogitsProcessor] = []
    if params.logit_bias:
        processors.append(LogitBias(params.logit_bias, vocab_size, device))
    banned_early = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
    if params.min_tokens > 0 and banned_early:
        processors.append(MinTokens(params.min_tokens, sorted(banned_early), device))
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(params.repetition_penalty, prompt_ids, vocab_size, device))
    if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
        processors.append(
            PresenceFrequencyPenalty(params.presence_penalty, params.frequency_penalty, vocab_size, device)
        )
    return processors


class TokenCounts:
    """How often each token occurs in the committed output [V], and per position with its continuation."""

    def __init__(self, vocab_size: int, device: torch.device, initial: Sequence[int] = ()) -> None:
        self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        self.add(initial)

    def add(self, tokens: Sequence[int]) -> None:
        if tokens:
            index = torch.tensor(list(tokens), dtype=torch.long, device=self.counts.device)
            self.counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float32))

    def at_positions(self, continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        """[N, V] float32: the committed counts plus each position's continuation, in one scatter."""
        counts = self.counts.expand(len(continuations), -1).clone()
        longest = max((len(tokens) for tokens in continuations), default=0)
        if longest == 0:
            return counts
        index = torch.zeros(len(continuations), longest, dtype=torch.long)
        present = torch.zeros(len(continuations), longest, dtype=torch.float32)
        for position, tokens in enumerate(continuations):
            index[position, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.long)
            present[position, : len(tokens)] = 1.0
        device = counts.device
        return counts.scatter_add_(1, index.to(device), present.to(device))


class LogitBias:
    """OpenAI's logit_bias: a fixed amount added to the logits of chosen tokens."""

    def __init__(self, bias: Sequence[tuple[int, float]], vocab_size: int, device: torch.device) -> None:
        self.bias = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        for token, amount in bias:
            self.bias[token] = amount  # a token named twice keeps its last bias, as a JSON object would

    def adjust(self, logits: torch.Tensor, continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        return logits + self.bias

    def commit(self, tokens: Sequence[int]) -> None:
        """The bias does not depend on the output."""


class MinTokens:
    """EOS and stop_token_ids (the tokens that would end the row) masked until `minimum` tokens are generated."""

    def __init__(self, minimum: int, banned: Sequence[int], device: torch.device) -> None:
        self.minimum = minimum
        self.banned = torch.tensor(list(banned), dtype=torch.long, device=device)
        self.generated = 0

    def adjust(self, logits: torch.Tensor, continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        early = [position for position, tokens in enumerate(continuations) if self._too_early(len(tokens))]
        if not early:
            return logits
        rows = torch.tensor(early, dtype=torch.long, device=logits.device)
        logits[rows[:, None], self.banned[None, :]] = float("-inf")
        return logits

    def commit(self, tokens: Sequence[int]) -> None:
        self.generated += len(tokens)

    def _too_early(self, continuation_length: int) -> bool:
        return self.generated + continuation_length < self.minimum


class RepetitionPenalty:
    """vLLM's repetition_penalty over prompt and output: a seen token's logit divided by the penalty where
    positive, multiplied where not (so a penalty > 1 always makes it less likely)."""

    def __init__(
        self, penalty: float, prompt_ids: Sequence[int], vocab_size: int, device: torch.device
    ) -> None:
        self.penalty = penalty
        self.seen = TokenCounts(vocab_size, device, prompt_ids)

    def adjust(self, logits: torch.Tensor, continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        seen = self.seen.at_positions(continuations) > 0
        penalised = torch.where(logits > 0, logits / self.penalty, logits * self.penalty)
        return torch.where(seen, penalised, logits)

    def commit(self, tokens: Sequence[int]) -> None:
        self.seen.add(tokens)


class PresenceFrequencyPenalty:
    """OpenAI's penalties over the generated tokens: logit -= frequency * count + presence * (count > 0)."""

    def __init__(self, presence: float, frequency: float, vocab_size: int, device: torch.device) -> None:
        self.presence = presence
        self.frequency = frequency
        self.generated = TokenCounts(vocab_size, device)

    def adjust(self, logits: torch.Tensor, continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        counts = self.generated.at_positions(continuations)
        return logits - self.frequency * counts - self.presence * (counts > 0).float()

    def commit(self, tokens: Sequence[int]) -> None:
        self.generated.add(tokens)
