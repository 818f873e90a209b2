"""Held-out evaluation of heads and the greedy tree search built on it.

For every held-out position we record the rank of the true future token in each head's full-vocabulary
logits. Top-k accuracy per head follows directly. With greedy acceptance a tree node (r_0, ..., r_d) is
accepted exactly when head i ranks the true token at r_i for every i ≤ d, and the accepted nodes of one step
form a single chain, so the expected tokens per step of a tree is 1 + sum over its nodes of P(path matches).
The search grows the tree one node at a time, always adding the candidate with the highest empirical path
probability (Medusa's greedy search, but on joint frequencies rather than a product of per-head accuracies),
and keeps the size that maximises tokens per step divided by the measured cost of verifying that many tokens.

That mean over positions overstates what decoding gets: a decode skips the positions a step accepted, so it
passes quickly through runs the heads predict well and spends more of its steps where they fail. The tokens per
step the search optimises are therefore those of a greedy decode walked along each held-out response (a step at
position j accepts the tree's drafts there and the next step starts after them), with the engine's lookahead
rules for spine trees (decoded_tokens_per_step). On the shipped heads' held-out responses that walk gives the
engine's own step counts; the mean over positions read 2.21 tokens per step where the engine decoded 2.03.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.engine.tree import chain, is_spine_tree
from gorgon.training.settings import VERIFY_COST_MS
from gorgon.training.trainer import IGNORE, Positions, head_logits

MAX_RANK = 10
"""Ranks at or beyond this count as a miss (the tree search never considers them)."""


@torch.inference_mode()
def target_ranks(
    heads: MedusaHeads,
    lm_head: nn.Linear,
    positions: Positions,
    batch_tokens: int = 512,
    embed_tokens: nn.Module | None = None,
) -> torch.Tensor:
    """ranks: [N, K] — rank of the true token among each head's logits (MAX_RANK = beyond or no target).

    Recurrent heads are read teacher-forced (each continues the true tokens): a node is only accepted when
    its whole path was right, so that is the condition under which its rank matters."""
    heads.eval()
    chunks = []
    for start in range(0, len(positions), batch_tokens):
        rows = slice(start, start + batch_tokens)
        targets = positions.targets[rows]
        logits = head_logits(heads, lm_head, embed_tokens, positions, rows)  # [K, N, V]
        target_logits = logits.gather(-1, targets.clamp(min=0).T.unsqueeze(-1))  # [K, N, 1]
        ranks = (logits > target_logits).sum(-1).T  # [N, K]
        ranks = torch.where(targets == IGNORE, MAX_RANK, ranks.clamp(max=MAX_RANK))
        chunks.append(ranks)
    return torch.cat(chunks)


@dataclass(frozen=True, slots=True)
class HeadAccuracy:
    head: int
    top1: float
    top5: float
    positions: int


def head_accuracies(ranks: torch.Tensor, targets: torch.Tensor) -> list[HeadAccuracy]:
    """Top-1/top-5 per head over the positions where that head has a target."""
    results = []
    for k in range(ranks.shape[1]):
        valid = targets[:, k] != IGNORE
        head_ranks = ranks[valid, k]
        results.append(
            HeadAccuracy(
                head=k,
                top1=float((head_ranks == 0).float().mean()),
                top5=float((head_ranks < 5).float().mean()),
                positions=int(valid.sum()),
            )
        )
    return results


def verify_cost_ms(tree_tokens: int, table: Sequence[tuple[int, float]] = VERIFY_COST_MS) -> float:
    """Latency of a forward over `tree_tokens` tokens, linear between (and beyond) the measured points."""
    points = sorted(table)
    if tree_tokens <= points[0][0]:
        return points[0][1]
    for (q0, c0), (q1, c1) in itertools.pairwise(points):
        if tree_tokens <= q1:
            return c0 + (c1 - c0) * (tree_tokens - q0) / (q1 - q0)
    (q0, c0), (q1, c1) = points[-2], points[-1]
    return c1 + (c1 - c0) * (tree_tokens - q1) / (q1 - q0)


def accepted_drafts(ranks: torch.Tensor, choices: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """[N] drafts a greedy tree step accepts at each position: the depth of the deepest node matching the truth."""
    accepted = torch.zeros(ranks.shape[0], dtype=torch.long)
    for path in choices:
        accepted = torch.maximum(accepted, _path_matches(ranks, path).long() * len(path))
    return accepted


def _path_matches(ranks: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    matches = torch.ones(ranks.shape[0], dtype=torch.bool)
    for head, rank in enumerate(path):
        matches &= ranks[:, head] == rank
    return matches


def decoded_tokens_per_step(
    ranks: torch.Tensor, choices: Sequence[tuple[int, ...]], response_positions: Sequence[int] | None = None
) -> float:
    """Tokens per step of greedy decoding with the tree `choices`, walked along each response of
    `response_positions` (the positions of each response, in order; None: all of `ranks` is one response).

    A step at position p emits the drafts it accepted and the token after them, and the next step starts there.
    A spine tree runs as the engine's lookahead tree (decode.lookahead_step): only its top-1 chain is accepted;
    when the token after the accepted chain is one of the siblings at that depth, the next step's first draft is
    the base model's own next token (the sibling's logits: always right) and the heads draft the rest from the
    sibling's hidden state (the position after)."""
    lengths = [ranks.shape[0]] if response_positions is None else list(response_positions)
    if choices and is_spine_tree(choices):
        return _lookahead_walk(ranks.tolist(), lengths, choices)
    return _tree_walk(accepted_drafts(ranks, choices).tolist(), lengths)


def _tree_walk(accepted: list[int], lengths: list[int]) -> float:
    steps, start = 0, 0
    for length in lengths:
        position = start
        while position < start + length:
            steps += 1
            position += accepted[position] + 1
        start += length
    return start / steps if steps else 1.0  # each position's token is emitted once


def _lookahead_walk(ranks: list[list[int]], lengths: list[int], choices: Sequence[tuple[int, ...]]) -> float:
    depth = max((len(path) for path in choices if not any(path)), default=0)  # the top-1 chain's
    siblings = {(len(path) - 1, path[-1]) for path in choices if path[-1] != 0}
    miss = [MAX_RANK] * len(ranks[0]) if ranks else []
    steps, start = 0, 0
    for length in lengths:
        position, from_sibling = start, False
        while position < start + length:
            steps += 1
            if from_sibling:  # the base model's token first, then the heads from the next position
                row = ranks[position + 1] if position + 1 < start + length else miss
                accepted = 1 + _leading_hits(row, depth - 1)
                next_rank = row[accepted - 1] if accepted - 1 < len(row) else None
            else:
                row = ranks[position]
                accepted = _leading_hits(row, depth)
                next_rank = row[accepted] if accepted < len(row) else None
            from_sibling = (accepted, next_rank) in siblings
            position += accepted + 1
        start += length
    return start / steps if steps else 1.0


def _leading_hits(row: list[int], depth: int) -> int:
    """How many of the first `depth` heads ranked the true token first, before the first that did not."""
    hits = 0
    while hits < depth and row[hits] == 0:
        hits += 1
    return hits


@dataclass(frozen=True, slots=True)
class TreePoint:
    """A tree of the search: its first `nodes` choices; tokens per step as the mean over positions (`tokens_per_step`)
    and as decoded along the responses (`decoded_tokens_per_step`); speed relative to plain, from the decoded figure."""

    nodes: int
    tokens_per_step: float
    decoded_tokens_per_step: float
    relative_speed: float


@dataclass(frozen=True, slots=True)
class TreeSearch:
    choices: tuple[tuple[int, ...], ...]
    """All nodes in the order the search added them; a prefix of any length is itself a valid tree."""
    curve: tuple[TreePoint, ...]
    best: TreePoint

    @property
    def best_choices(self) -> list[list[int]]:
        return [list(path) for path in self.choices[: self.best.nodes]]


def grow_tree(
    ranks: torch.Tensor,
    max_nodes: int,
    top_k: int = MAX_RANK,
    cost_table: Sequence[tuple[int, float]] = VERIFY_COST_MS,
    *,
    spine_only: bool = False,
    branching_cost_ms: float = 0.0,
    response_positions: Sequence[int] | None = None,
) -> TreeSearch:
    """Greedy tree growth on empirical path frequencies; ranks: [N, K]. With `spine_only` (recurrent heads)
    only nodes branching off the top-1 chain, (0, ..., 0, r), are grown. Such spine trees run as lookahead trees
    in one masked window (decode.lookahead_step) and cost what a chain of as many nodes costs; a tree with a node
    deeper off the chain pays `branching_cost_ms` more per step (its keys are gathered per node). The best tree is
    compared with the best top-1 chain; the chain wins when it is faster. Speed is judged on the tokens per step
    decoded along the responses of `response_positions` (see decoded_tokens_per_step)."""
    num_heads = ranks.shape[1]
    match_masks: dict[tuple[int, ...], torch.Tensor] = {}
    frontier: dict[tuple[int, ...], float] = {}

    def offer_children(parent: tuple[int, ...], parent_mask: torch.Tensor) -> None:
        depth = len(parent)
        if depth == num_heads or (spine_only and any(parent)):
            return
        for rank in range(top_k):
            mask = parent_mask & (ranks[:, depth] == rank)
            match_masks[(*parent, rank)] = mask
            frontier[(*parent, rank)] = float(mask.float().mean())

    offer_children((), torch.ones(ranks.shape[0], dtype=torch.bool))
    chosen: list[tuple[int, ...]] = []
    expected = 1.0
    branching = False
    curve = [TreePoint(0, 1.0, 1.0, 1.0)]
    while frontier and len(chosen) < max_nodes:
        best = max(frontier, key=lambda path: (frontier[path], [-rank for rank in path]))
        expected += frontier.pop(best)
        chosen.append(best)
        branching = branching or any(best[:-1])  # off the top-1 chain: a lookahead tree no longer
        offer_children(best, match_masks[best])
        decoded = decoded_tokens_per_step(ranks, chosen, response_positions)
        speed = relative_speed(decoded, len(chosen), cost_table, branching_cost_ms if branching else 0.0)
        curve.append(TreePoint(len(chosen), expected, decoded, speed))
    best_point = max(curve, key=lambda point: point.relative_speed)
    search = TreeSearch(choices=tuple(chosen), curve=tuple(curve), best=best_point)
    return _with_chain_if_faster(search, ranks, cost_table, response_positions)


def relative_speed(
    tokens_per_step: float, nodes: int, cost_table: Sequence[tuple[int, float]], extra_ms: float = 0.0
) -> float:
    """Speed relative to plain decoding of a shape of `nodes` drafted nodes costing `extra_ms` beyond its tokens."""
    return (
        tokens_per_step / (verify_cost_ms(1 + nodes, cost_table) + extra_ms) * verify_cost_ms(1, cost_table)
    )


def _chain_point(
    ranks: torch.Tensor,
    depth: int,
    cost_table: Sequence[tuple[int, float]],
    response_positions: Sequence[int] | None,
) -> TreePoint:
    """The top-1 chain of `depth` drafts as a point of the search."""
    expected = 1.0 + float(accepted_drafts(ranks, chain(depth)).float().mean())
    decoded = decoded_tokens_per_step(ranks, chain(depth), response_positions)
    return TreePoint(depth, expected, decoded, relative_speed(decoded, depth, cost_table))


def _with_chain_if_faster(
    search: TreeSearch,
    ranks: torch.Tensor,
    cost_table: Sequence[tuple[int, float]],
    response_positions: Sequence[int] | None,
) -> TreeSearch:
    """The greedy growth adds siblings early, so the top-1 chains (which pay no branching cost) are not on its
    curve: the best of them replaces the best grown tree when it is faster."""
    chains = [
        _chain_point(ranks, depth, cost_table, response_positions) for depth in range(1, ranks.shape[1] + 1)
    ]
    best_chain = max(chains, key=lambda point: point.relative_speed)
    if best_chain.relative_speed <= search.best.relative_speed:
        return search
    return TreeSearch(chain(best_chain.nodes), search.curve, best_chain)
