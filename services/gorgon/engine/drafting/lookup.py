"""Context lookup drafts: where the text so far ends in an n-gram it already holds, draft what followed it then.

A small model's greedy answers repeat themselves and their prompt (names, phrases, list items, code), and the
Medusa heads, which read one hidden state, do not see that. Prompt lookup decoding does: find the most recent
earlier occurrence of the text's last n tokens (n from `max_ngram` down to `min_ngram`, the longest match first)
in the prompt and the tokens generated so far, and propose the tokens that followed it.

The engine puts such a proposal on the tree's top-1 chain in place of the heads' drafts (the heads' own first
choices move one rank down, into the tree's siblings), so it costs no extra tree nodes, and verification is the
same exact step as for the heads' drafts: the output cannot change, only how many tokens a step accepts.
Measured in the engine (docs/engine.md, "Drafting"; docs/heads.md, "Results").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


class ContextLookup:
    """The tokens of one sequence with an index of their n-grams: (n-gram) -> end of its latest occurrence whose
    next token is known. `extend` as tokens arrive; `propose` the continuation of the current suffix."""

    def __init__(self, tokens: Iterable[int], *, min_ngram: int, max_ngram: int) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.min_ngram, self.max_ngram = min_ngram, max_ngram
        self.tokens: list[int] = []
        self._ends: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending here now have a known next token: `token`
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self._ends[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def propose(self, length: int, after: Sequence[int] = ()) -> list[int]:
        """Up to `length` tokens that followed the latest earlier occurrence of the longest suffix of
        tokens + `after` that occurred before; [] when no suffix of min_ngram tokens did."""
        text = self.tokens[-self.max_ngram :] + list(after)
        for n in range(min(self.max_ngram, len(text)), self.min_ngram - 1, -1):
            end = self._ends.get(tuple(text[-n:]))
            if end is not None:
                return self.tokens[end : end + length]
        return []


def with_lookup_drafts(
    draft_topk: torch.Tensor,
    lookups: Sequence[ContextLookup | None],
    first_draft_by_model: torch.Tensor | None,
) -> torch.Tensor:
    """draft_topk [B, K, R] with each row's lookup proposal as the rank-0 draft of heads 0.. (the heads' drafts
    shifted one rank down, the proposed token not repeated). Where a row's first drafts came from the base model's
    own logits (a lookahead leaf, decode.lookahead_step), they stay and the proposal continues after their top-1,
    from head 1 on. Rows without a lookup or a match keep their drafts; with none anywhere, draft_topk itself."""
    num_heads = draft_topk.shape[1]
    by_model = first_draft_by_model.tolist() if first_draft_by_model is not None else [False] * len(lookups)
    proposals: dict[int, tuple[int, list[int]]] = {}  # row -> (first head, proposed tokens)
    for row, lookup in enumerate(lookups):
        if lookup is None:
            continue
        first = 1 if by_model[row] else 0
        after = [int(draft_topk[row, 0, 0])] if first else []
        proposal = lookup.propose(num_heads - first, after=after)
        if proposal:
            proposals[row] = (first, proposal)
    if not proposals:
        return draft_topk
    rows = draft_topk.tolist()
    for row, (first, proposal) in proposals.items():
        for head, token in enumerate(proposal, start=first):
            ranked = rows[row][head]
            rows[row][head] = [token, *(draft for draft in ranked if draft != token)][: len(ranked)]
    return torch.tensor(rows, dtype=draft_topk.dtype, device=draft_topk.device)
