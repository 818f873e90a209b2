"""Log-probabilities of emitted tokens, as OpenAI's `logprobs` reports them.

A token's log-probability is the log-softmax of the base model's raw logits at the position that chose it (before
penalties, bias, grammar or temperature), computed in float32. With speculation the verifying forward provides
them: a drafted token's come from its parent node, the token chosen after the accepted path from its last node.
Only the rows that asked, at the positions they emitted, are computed; never the whole tree.

Token text follows vLLM: each token decoded alone (`tokenizer.decode([id])`, special tokens spelled out), with the
leading spaces a SentencePiece tokenizer drops when a piece is decoded alone put back; the bytes are that text's
UTF-8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gorgon.engine.interface import TokenLogprob, TopLogprob

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SENTENCEPIECE_SPACE = "\u2581"
"""How a SentencePiece vocabulary spells a word-initial space inside a piece."""


@dataclass(frozen=True, slots=True)
class EmittedLogprobs:
    """One row's emitted tokens' log-probabilities, in order, and each position's `top` best alternatives."""

    logprobs: list[float]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]

    def __len__(self) -> int:
        return len(self.logprobs)


def emitted_logprobs(logits: torch.Tensor, tokens: Sequence[int], top: int) -> EmittedLogprobs:
    """logits [N, V] raw at the positions that chose `tokens` [N] -> their log-probabilities and top alternatives
    (most likely first)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
    index = torch.tensor(list(tokens), dtype=torch.long, device=logits.device)
    chosen = log_probs.gather(1, index[:, None])[:, 0]
    best = log_probs.topk(top, dim=-1) if top > 0 else None
    return EmittedLogprobs(
        chosen.tolist(),
        best.indices.tolist() if best is not None else [[] for _ in tokens],
        best.values.tolist() if best is not None else [[] for _ in tokens],
    )


class TokenTexts:
    """Each token's text as decoded alone, remembered (a vocabulary's pieces are few, the calls many)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.texts: dict[int, str] = {}

    def text(self, token: int) -> str:
        known = self.texts.get(token)
        if known is None:
            known = self.texts[token] = self._decode_alone(token)
        return known

    def _decode_alone(self, token: int) -> str:
        text = self.tokenizer.decode([token])
        if not isinstance(text, str):
            raise TypeError(f"the tokenizer decoded token {token} to {type(text).__name__}")
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if not isinstance(piece, str):
            return text
        spaces = len(piece) - len(piece.lstrip(SENTENCEPIECE_SPACE))
        missing = spaces - (len(text) - len(text.lstrip(" ")))
        return " " * missing + text if missing > 0 else text

    def token_logprobs(self, emitted: EmittedLogprobs, tokens: Sequence[int]) -> tuple[TokenLogprob, ...]:
        """The first len(tokens) entries of `emitted` (the tokens the row kept) as the interface's values."""
        entries = zip(tokens, emitted.logprobs, emitted.top_ids, emitted.top_logprobs, strict=False)
        return tuple(
            TokenLogprob(
                token=self.text(token),
                logprob=logprob,
                token_bytes=self.utf8(token),
                top=tuple(
                    TopLogprob(token=self.text(other), logprob=value, token_bytes=self.utf8(other))
                    for other, value in zip(top_ids, top_values, strict=True)
                ),
            )
            for token, logprob, top_ids, top_values in entries
        )

    def utf8(self, token: int) -> tuple[int, ...]:
        return tuple(self.text(token).encode("utf-8"))
