"""One decoding step over a batch, as Medusa's five named steps:

    candidates → tree forward → evaluate → accept → update KV

Plain decoding is the same step with a one-node tree (the root only), so there is a single code path for plain,
chain and tree shapes. Greedy rows accept a drafted token when it equals the base model's argmax (output identical
to plain greedy); sampled rows use typical acceptance and sample the bonus token with temperature / top_p
(engine/sampling.py). A row's logits processors (engine/logits_processing.py) adjust its logits at every node
before acceptance and choice, each node seeing the drafted tokens on its path as its continuation, so greedy rows
with processors too emit what plain decoding with them emits. Rows that ask for log-probabilities get them from
the raw logits at the positions that emitted their tokens (engine/logprobs.py). The step ends by drafting for the
next one (engine/drafting/heads.py) when asked to.

Prompts that are identical token for token in one prefill (a request's n choices) are forwarded once; the other
rows take a copy of their KV cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gorgon.engine.drafting.heads import DRAFT_TOPK, draft
from gorgon.engine.forward import forward_next_tokens, forward_tokens, row_logits
from gorgon.engine.kv import RowKVCache
from gorgon.engine.logprobs import EmittedLogprobs, emitted_logprobs
from gorgon.engine.parts import ModelParts
from gorgon.engine.sampling import (
    Continuations,
    RowSampling,
    TypicalAcceptance,
    choose_next_tokens,
    greedy_tokens,
    node_acceptance,
    processed_logits,
    right_after_committed,
)
from gorgon.engine.tree import TreeBuffers


@dataclass(slots=True)
class StepOutcome:
    """Per row: the accepted drafted tokens plus the new next token, and the heads' drafts for the next step.
    `failed_rows`: rows whose token choice failed (row -> why); their tokens are placeholders to drop.
    `logprobs`: for the rows that ask for them, their emitted tokens' log-probabilities."""

    emitted: list[list[int]]  # per row, 1..depth+1 tokens
    accepted_drafts: list[int]  # per row
    next_tokens: torch.Tensor  # [B] long
    draft_topk: torch.Tensor | None  # [B, K, DRAFT_TOPK] long
    plain_draft_seconds: float = 0.0  # a plain step's drafting for a speculative next step (not a plain cost)
    first_draft_by_model: torch.Tensor | None = None  # [B] bool: draft_topk[b, 0] from the model
    failed_rows: dict[int, str] = field(default_factory=dict)
    logprobs: dict[int, EmittedLogprobs] = field(default_factory=dict)


def generate_candidates(
    next_tokens: torch.Tensor, draft_topk: torch.Tensor | None, tree: TreeBuffers
) -> torch.Tensor:
    """Step 1: the tree's tokens per row, [B, T]; node 0 is the token chosen last step."""
    if tree.num_nodes == 1 or draft_topk is None:
        return next_tokens[:, None]
    drafts = draft_topk[:, : tree.max_depth, : tree.topk].reshape(next_tokens.shape[0], -1)
    flat = torch.cat([next_tokens[:, None], drafts], dim=1)
    return flat[:, tree.tree_indices]


def tree_forward(
    parts: ModelParts, cache: RowKVCache, candidates: torch.Tensor, tree: TreeBuffers
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: every node of every row in one forward -> hidden [B, T, H] and logits [B, T, V]. A chain's nodes
    sit at the slots of their depths; a branching tree's attend to their paths in plain-decoding order."""
    ancestors = None if tree.is_chain else tree.ancestors
    hidden = forward_tokens(
        parts,
        cache,
        candidates,
        tree.depths,
        tree.attention_mask,
        ancestors=ancestors,
        exact_queries=tree.num_nodes,
    )
    return hidden, parts.lm_head(hidden)


def evaluate(
    logits: torch.Tensor,
    candidates: torch.Tensor,
    tree: TreeBuffers,
    rows: Sequence[RowSampling],
    rule: TypicalAcceptance,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3: best path and accepted draft count per row. logits [B, T, V], candidates [B, T] -> ([B], [B])."""
    batch = candidates.shape[0]
    paths = tree.retrieve_indices  # [P, D + 1]
    if tree.num_nodes == 1:
        zeros = torch.zeros(batch, dtype=torch.long, device=candidates.device)
        return zeros, zeros
    children = paths[:, 1:]  # [P, D]
    valid = children >= 0
    node_ok = node_acceptance(
        logits, candidates, tree.parents, rows, rule
    )  # [B, T] accepted given its parent
    path_ok = node_ok[:, children.clamp(min=0)] & valid[None]  # [B, P, D]
    accept_lengths = path_ok.long().cumprod(-1).sum(-1)  # [B, P]
    best = accept_lengths.argmax(-1)
    return best, accept_lengths.gather(1, best[:, None])[:, 0]


def accept(
    logits: torch.Tensor,
    tree: TreeBuffers,
    best: torch.Tensor,
    accepted: torch.Tensor,
    rows: Sequence[RowSampling],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, str]]:
    """Step 4: per row the kept nodes [B, D + 1] (the best path, root first, -1 padded), its last accepted node
    [B] and the token chosen after it [B]; and the rows whose choice failed."""
    kept_nodes = tree.retrieve_indices[best]  # [B, D + 1]
    last_nodes = kept_nodes.gather(1, accepted[:, None])[:, 0]  # [B]
    batch_index = torch.arange(logits.shape[0], device=logits.device)
    new_next, failed = choose_next_tokens(logits[batch_index, last_nodes], rows)
    return kept_nodes, last_nodes, new_next, failed


def speculative_step(
    parts: ModelParts,
    cache: RowKVCache,
    next_tokens: torch.Tensor,
    draft_topk: torch.Tensor | None,
    tree: TreeBuffers,
    rows: Sequence[RowSampling],
    rule: TypicalAcceptance,
    *,
    want_drafts: bool,
) -> StepOutcome:
    """One step for every row: candidates → tree forward → evaluate → accept → update KV."""
    if tree.num_nodes == 1:
        return plain_step(parts, cache, next_tokens, rows, want_drafts=want_drafts)
    if tree.lookahead and not tree.is_chain:
        return lookahead_step(
            parts, cache, next_tokens, draft_topk, tree, rows, rule, want_drafts=want_drafts
        )
    candidates = generate_candidates(next_tokens, draft_topk, tree)  # [B, T]
    hidden, logits = tree_forward(parts, cache, candidates, tree)  # [B, T, H], [B, T, V]
    chosen, unprocessed = processed_logits(logits, tree_continuations(candidates, tree), rows)
    best, accepted = evaluate(chosen, candidates, tree, rows, rule)
    kept_nodes, last_nodes, new_next, failed = accept(chosen, tree, best, accepted, rows)
    cache.compact(kept_nodes, accepted + 1)  # step 5: update KV
    batch_index = torch.arange(candidates.shape[0], device=candidates.device)
    new_drafts = draft(parts, hidden[batch_index, last_nodes], new_next) if want_drafts else None
    drafted_tokens = candidates.gather(1, kept_nodes.clamp(min=0))[:, 1:].tolist()
    accepted_list = accepted.tolist()
    next_list = new_next.tolist()
    emitted = [
        [*drafted_tokens[row][: accepted_list[row]], next_list[row]] for row in range(candidates.shape[0])
    ]
    return StepOutcome(
        emitted,
        accepted_list,
        new_next,
        new_drafts,
        failed_rows=unprocessed | failed,
        logprobs=rows_logprobs(logits, emitted, rows, kept_nodes),
    )


def tree_continuations(
    candidates: torch.Tensor, tree: TreeBuffers, nodes: int | None = None
) -> Continuations:
    """The continuation of each of the first `nodes` tree nodes (all by default) in a row: its path's drafted
    tokens, depth 1 to its own (the root's is empty: its token was emitted last step). Read from the tree only
    when a row with processors asks."""
    paths: list[list[int]] = []

    def of_row(row: int) -> list[list[int]]:
        if not paths:
            paths.extend([node for node in path[1:] if node >= 0] for path in tree.ancestors[:nodes].tolist())
        tokens = candidates[row].tolist()
        return [[tokens[node] for node in path] for path in paths]

    return of_row


def rows_logprobs(
    logits: torch.Tensor,
    emitted: Sequence[Sequence[int]],
    rows: Sequence[RowSampling],
    positions: torch.Tensor | None = None,
) -> dict[int, EmittedLogprobs]:
    """For the rows that ask: the log-probabilities of emitted[row] from the raw logits [B, N, V] at
    positions[row] [B, >= len(emitted[row])], the nodes that chose them in order (None: positions 0, 1, ...)."""
    return {
        index: emitted_logprobs(
            logits[index, : len(emitted[index])]
            if positions is None
            else logits[index, positions[index, : len(emitted[index])]],
            emitted[index],
            row.logprobs,
        )
        for index, row in enumerate(rows)
        if row.logprobs is not None
    }


def lookahead_step(
    parts: ModelParts,
    cache: RowKVCache,
    next_tokens: torch.Tensor,
    draft_topk: torch.Tensor | None,
    tree: TreeBuffers,
    rows: Sequence[RowSampling],
    rule: TypicalAcceptance,
    *,
    want_drafts: bool,
) -> StepOutcome:
    """A spine tree in one masked window: the top-1 chain is verified, the leaves off it draft the next step.

    The chain (nodes 0 .. spine_nodes - 1) sits at its depths, so it rounds exactly as a chain step and as
    plain decoding do. A leaf sits past the chain's slots, so its outputs round differently and are never
    emitted; but when the token chosen after the accepted chain is a leaf's token, that leaf has already run the
    base model on it: its logits are the next step's first drafts (their top-1 is, up to rounding, the base
    model's next token), and the heads continue from its hidden state. The gain an accepted sibling gives a
    tree step arrives one step later, without gathering keys per node (engine/attention.py), which costs more
    than it gains on a CPU.
    """
    candidates = generate_candidates(next_tokens, draft_topk, tree)  # [B, T]
    spine = tree.spine_nodes
    hidden = forward_tokens(
        parts, cache, candidates, tree.depths, tree.attention_mask, exact_queries=spine
    )  # [B, T, H]
    logits = parts.lm_head(hidden)  # [B, T, V]
    chain_parents = tree.parents[:spine]
    chain_logits, unprocessed = processed_logits(
        logits[:, :spine], tree_continuations(candidates, tree, spine), rows
    )  # [B, spine, V]
    node_ok = node_acceptance(chain_logits, candidates[:, :spine], chain_parents, rows, rule)
    accepted = node_ok[:, 1:].long().cumprod(-1).sum(-1)  # [B]; chain node d is node d
    batch_index = torch.arange(candidates.shape[0], device=candidates.device)
    new_next, failed = choose_next_tokens(chain_logits[batch_index, accepted], rows)
    cache.compact(tree.depths[:spine].expand(candidates.shape[0], -1), accepted + 1)
    new_drafts = first_by_model = None
    if want_drafts:
        new_drafts, first_by_model = _lookahead_drafts(
            parts, tree, candidates, hidden, logits, accepted, new_next
        )
    chain_tokens = candidates[:, 1:spine].tolist()
    accepted_list, next_list = accepted.tolist(), new_next.tolist()
    emitted = [
        [*chain_tokens[row][: accepted_list[row]], next_list[row]] for row in range(candidates.shape[0])
    ]
    return StepOutcome(
        emitted,
        accepted_list,
        new_next,
        new_drafts,
        first_draft_by_model=first_by_model,
        failed_rows=unprocessed | failed,
        logprobs=rows_logprobs(logits, emitted, rows),  # chain node d emitted token d
    )


def _lookahead_drafts(
    parts: ModelParts,
    tree: TreeBuffers,
    candidates: torch.Tensor,
    hidden: torch.Tensor,
    logits: torch.Tensor,
    last_nodes: torch.Tensor,
    new_next: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Next step's drafts [B, K, DRAFT_TOPK]: from the leaf holding new_next where there is one (its top-k
    logits first, the heads' drafts from its hidden state after), else from the last accepted chain node; and
    [B] bool, where the first draft came from such a leaf (its top-1 is the base model's own next token)."""
    leaves = torch.arange(candidates.shape[1], device=candidates.device) >= tree.spine_nodes  # [T]
    holds_next = (
        leaves[None, :] & (tree.parents[None, :] == last_nodes[:, None]) & (candidates == new_next[:, None])
    )  # [B, T]
    found = holds_next.any(-1)
    leaf = holds_next.long().argmax(-1)  # the matching leaf (siblings hold distinct tokens)
    batch_index = torch.arange(candidates.shape[0], device=candidates.device)
    leaf_logits = logits[batch_index, leaf]  # [B, V]
    source = torch.where(found, leaf, last_nodes)
    tokens = torch.where(found, greedy_tokens(leaf_logits), new_next)
    drafts = draft(parts, hidden[batch_index, source], tokens)
    if drafts is None or not bool(found.any()):
        return drafts, torch.zeros_like(found)
    shifted = torch.cat([leaf_logits.topk(DRAFT_TOPK, dim=-1).indices[:, None], drafts[:, :-1]], dim=1)
    return torch.where(found[:, None, None], shifted, drafts), found


def plain_step(
    parts: ModelParts,
    cache: RowKVCache,
    next_tokens: torch.Tensor,
    rows: Sequence[RowSampling],
    *,
    want_drafts: bool,
) -> StepOutcome:
    """The one-node-tree step without the tree bookkeeping: feed each row's next token, choose the following."""
    hidden = forward_next_tokens(parts, cache, next_tokens)  # [B, 1, H]
    logits = row_logits(parts.lm_head, hidden[:, 0])[:, None]  # [B, 1, V]
    new_next, failed = choose_first_tokens(logits, rows)
    cache.advance(1)
    started = time.perf_counter()
    new_drafts = draft(parts, hidden[:, 0], new_next) if want_drafts else None
    emitted = [[token] for token in new_next.tolist()]
    return StepOutcome(
        emitted,
        [0] * len(rows),
        new_next,
        new_drafts,
        plain_draft_seconds=time.perf_counter() - started if want_drafts else 0.0,
        failed_rows=failed,
        logprobs=rows_logprobs(logits, emitted, rows),
    )


def choose_first_tokens(
    logits: torch.Tensor, rows: Sequence[RowSampling]
) -> tuple[torch.Tensor, dict[int, str]]:
    """logits [B, 1, V] at the position right after each row's committed output -> the next token per row [B]
    (through the rows' processors), and the rows whose processing or sampling failed."""
    chosen, unprocessed = processed_logits(logits, right_after_committed, rows)
    new_next, failed = choose_next_tokens(chosen[:, 0], rows)
    return new_next, unprocessed | failed


def prefill_chunk(parts: ModelParts, cache: RowKVCache, chunks: Sequence[Sequence[int]]) -> None:
    """Write the next piece of each row's prompt (pieces of one length) into `cache` and choose nothing: a long
    prompt is written a chunk per step, `prefill` writing its last piece."""
    forward_prompts(parts, cache, chunks)
    cache.advance(len(chunks[0]))


def prefill(
    parts: ModelParts, cache: RowKVCache, prompts: Sequence[Sequence[int]], rows: Sequence[RowSampling]
) -> StepOutcome:
    """Write every prompt (or its last piece, after what `prefill_chunk` wrote) into its row of `cache`; choose
    each row's first token and drafts."""
    hidden = forward_prompts(parts, cache, prompts)  # [B, S, H]
    device = cache.lengths.device
    last = torch.tensor([len(prompt) - 1 for prompt in prompts], device=device)
    batch_index = torch.arange(len(prompts), device=device)
    last_hidden = hidden[batch_index, last]  # [B, H]
    logits = row_logits(parts.lm_head, last_hidden)[:, None]  # [B, 1, V]
    next_tokens, failed = choose_first_tokens(logits, rows)
    depths = torch.arange(hidden.shape[1], device=device)
    cache.compact(depths.expand(len(prompts), -1), last + 1)
    emitted = [[token] for token in next_tokens.tolist()]
    return StepOutcome(
        emitted,
        [0] * len(prompts),
        next_tokens,
        draft(parts, last_hidden, next_tokens),
        failed_rows=failed,
        logprobs=rows_logprobs(logits, emitted, rows),
    )


def forward_prompts(parts: ModelParts, cache: RowKVCache, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    """Run `prompts` (zero-padded to the longest) at each row's next slots -> hidden [B, S, H], writing their KV.
    A prompt that several rows hold is forwarded once: the others take a copy of its row's KV and hidden states."""
    firsts, sources = distinct_prompts(prompts)
    if len(firsts) == len(prompts):
        return _forward_padded(parts, cache, prompts)
    device = cache.lengths.device
    shared = cache.select_rows(torch.tensor(firsts, device=device))
    hidden = _forward_padded(parts, shared, [prompts[row] for row in firsts])
    copies = torch.tensor(sources, device=device)
    cache.copy_rows(shared, copies)
    return hidden.index_select(0, copies)


def distinct_prompts(prompts: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """The first row holding each distinct prompt, and for every row the index of its prompt among those."""
    index_of: dict[tuple[int, ...], int] = {}
    firsts: list[int] = []
    sources: list[int] = []
    for row, prompt in enumerate(prompts):
        key = tuple(prompt)
        if key not in index_of:
            index_of[key] = len(firsts)
            firsts.append(row)
        sources.append(index_of[key])
    return firsts, sources


def _forward_padded(parts: ModelParts, cache: RowKVCache, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    longest = max(len(prompt) for prompt in prompts)
    device = cache.lengths.device
    input_ids = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        input_ids[row, : len(prompt)] = torch.tensor(list(prompt), dtype=torch.long)
    causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    depths = torch.arange(longest, device=device)
    counts = [len(prompt) for prompt in prompts]
    return forward_tokens(parts, cache, input_ids, depths, causal, query_counts=counts)  # [B, S, H]
