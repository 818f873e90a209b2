"""One decoding step over a batch, as Medusa's five named steps:

    candidates → tree forward → evaluate → accept → update KV

Plain decoding is the same step with a one-node tree (the root only), so there is a single code path for plain,
chain and tree shapes. Greedy rows accept a drafted token when it equals the base model's argmax (output identical
to plain greedy); sampled rows use typical acceptance and sample the bonus token with temperature / top_p.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gorgon.engine.attention import node_key_slots, use_row_attention
from gorgon.engine.config import DEFAULT_TYPICAL_ALPHA, DEFAULT_TYPICAL_EPSILON
from gorgon.engine.kv import RowKVCache
from gorgon.engine.tree import TreeBuffers

WINDOW_ROUNDING = 32  # attention window rounded up so SDPA sees few distinct shapes
DRAFT_TOPK = 10  # top-k kept per Medusa head (the widest shipped tree uses rank 9)


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


@dataclass(slots=True)
class StepOutcome:
    """Per row: the accepted drafted tokens plus the new next token, and the heads' drafts for the next step."""

    emitted: list[list[int]]  # per row, 1..depth+1 tokens
    accepted_drafts: list[int]  # per row
    next_tokens: torch.Tensor  # [B] long
    draft_topk: torch.Tensor | None  # [B, K, DRAFT_TOPK] long
    plain_draft_seconds: float = 0.0  # a plain step's drafting for a speculative next step (not a plain cost)
    first_draft_by_model: torch.Tensor | None = None  # [B] bool: draft_topk[b, 0] from the model


@dataclass(frozen=True, slots=True)
class ModelParts:
    """The pieces of a causal LM the engine calls: decoder body, vocabulary projection, Medusa heads."""

    decoder: nn.Module
    lm_head: nn.Module
    heads: nn.Module | None
    draft_vocabulary: DraftVocabulary | None = None
    embed_tokens: nn.Module | None = (
        None  # the input embeddings (recurrent heads read their tokens' embeddings)
    )

    def __post_init__(self) -> None:
        use_row_attention(self.decoder)  # tree forwards need per-node key order (engine/attention.py)


@dataclass(frozen=True, slots=True)
class DraftVocabulary:
    """The tokens heads that share the lm_head draft from (FR-Spec: the most frequent tokens of the model's own
    output), with the lm_head rows of just those tokens. Drafting over them instead of the whole vocabulary
    costs a fraction of the projection; the output is unchanged, since verification is exact."""

    token_ids: torch.Tensor  # [N] long
    projection: nn.Module  # H -> N, rows token_ids of the lm_head (nn.Linear or its packed copy)

    @classmethod
    def from_lm_head(cls, lm_head: nn.Module, token_ids: torch.Tensor) -> DraftVocabulary:
        weight = lm_head.weight
        projection = nn.Linear(weight.shape[1], token_ids.numel(), bias=False, device=weight.device)
        with torch.no_grad():
            projection.weight = nn.Parameter(
                weight.detach()[token_ids.to(weight.device)], requires_grad=False
            )
        return cls(token_ids.to(weight.device), projection)


def attention_mask(lengths: torch.Tensor, tree_mask: torch.Tensor, window: int) -> torch.Tensor:
    """[B, 1, T, window] bool: query i of row b sees the row's accepted slots and its tree ancestors."""
    num_nodes = tree_mask.shape[0]
    slots = torch.arange(window, device=lengths.device)
    if num_nodes == 1:  # plain decoding: the accepted slots and the new token's own slot
        return (slots[None, :] <= lengths[:, None])[:, None, None]
    relative = slots[None, :] - lengths[:, None]  # [B, W]
    seen_past = relative < 0
    in_tree = (relative >= 0) & (relative < num_nodes)
    tree_columns = relative.clamp(0, num_nodes - 1)[:, None, :].expand(-1, num_nodes, -1)  # [B, T, W]
    tree_part = tree_mask[None].expand(lengths.shape[0], -1, -1).gather(2, tree_columns)
    return (seen_past[:, None, :] | (in_tree[:, None, :] & tree_part))[:, None]


def forward_tokens(
    parts: ModelParts,
    cache: RowKVCache,
    input_ids: torch.Tensor,
    depths: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    ancestors: torch.Tensor | None = None,
    exact_queries: int = 0,
) -> torch.Tensor:
    """Run input_ids [B, T] written at slots lengths + arange(T), positions lengths + depths. -> hidden [B, T, H].

    With `ancestors` (a branching tree, see TreeBuffers) every node attends to its path in plain-decoding order
    (engine/attention.py), so accepted nodes round exactly as plain steps do; without, one masked window, whose
    first `exact_queries` tokens (those that may be emitted) attend as virtual rows of one query so that they round as a
    plain step's token does (engine/attention.py).
    """
    num_nodes = input_ids.shape[1]
    longest = int(cache.lengths.max()) + num_nodes
    window = -(-longest // WINDOW_ROUNDING) * WINDOW_ROUNDING
    offsets = torch.arange(num_nodes, device=input_ids.device).expand(input_ids.shape[0], -1)
    cache.plan_forward(offsets, window)
    window = cache.plan.window
    extra: dict[str, torch.Tensor] = {}
    if ancestors is None:
        mask = attention_mask(cache.lengths, tree_mask, window)
    else:
        extra["key_slots"], mask = node_key_slots(cache.lengths, ancestors, depths, window)
    if exact_queries:
        extra["exact_queries"] = exact_queries
    positions = cache.lengths[:, None] + depths[None, :]
    output = parts.decoder(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        **extra,
    )
    return output.last_hidden_state


def draft(parts: ModelParts, hidden: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor | None:
    """hidden: [B, H] at each row's last accepted token, next_tokens [B] the tokens it chose
    -> the heads' top-k drafts [B, K, DRAFT_TOPK]."""
    if parts.heads is None:
        return None
    if parts.heads.recurrent:
        return _draft_recurrent(parts, hidden, next_tokens)
    if parts.heads.own_lm_heads:
        logits = parts.heads(hidden[:, None, :], parts.lm_head)[:, :, 0]  # [K, B, V]
        return logits.topk(DRAFT_TOPK, dim=-1).indices.permute(1, 0, 2).contiguous()
    # Heads sharing one projection: project all heads' states in one product (one pass over its weights).
    projected = torch.stack([head(hidden) for head in parts.heads.heads])  # [K, B, H]
    vocabulary = parts.draft_vocabulary
    projection = parts.lm_head if vocabulary is None else vocabulary.projection
    ranks = projection(projected).topk(DRAFT_TOPK, dim=-1).indices.permute(1, 0, 2)  # [B, K, DRAFT_TOPK]
    return (ranks if vocabulary is None else vocabulary.token_ids[ranks]).contiguous()


def _draft_recurrent(parts: ModelParts, hidden: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
    """Recurrent heads draft along their own top-1 path: head k continues next_tokens and heads 0..k-1's best
    drafts, so row b's drafts [K, DRAFT_TOPK] fit trees whose nodes branch off that path only
    (tree.spine_choices)."""
    heads = parts.heads
    vocabulary = None if heads.own_lm_heads else parts.draft_vocabulary  # own projections span the vocabulary
    projection = parts.lm_head if vocabulary is None else vocabulary.projection
    state, token, drafts = hidden, next_tokens, []
    for k in range(heads.num_heads):
        state = heads.head_state(k, state, parts.embed_tokens(token))  # [B, H]
        ranks = heads.project(k, state, projection).topk(DRAFT_TOPK, dim=-1).indices  # [B, DRAFT_TOPK]
        if vocabulary is not None:
            ranks = vocabulary.token_ids[ranks]
        drafts.append(ranks)
        token = ranks[:, 0]
    return torch.stack(drafts, dim=1)


def generate_candidates(
    next_tokens: torch.Tensor, draft_topk: torch.Tensor | None, tree: TreeBuffers
) -> torch.Tensor:
    """Step 1: the tree's tokens per row, [B, T]; node 0 is the token chosen last step."""
    if tree.num_nodes == 1 or draft_topk is None:
        return next_tokens[:, None]
    drafts = draft_topk[:, : tree.max_depth, : tree.topk].reshape(next_tokens.shape[0], -1)
    flat = torch.cat([next_tokens[:, None], drafts], dim=1)
    return flat[:, tree.tree_indices]


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


def typical_accept(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, rule: TypicalAcceptance
) -> torch.Tensor:
    """logits [N, V] at parent nodes, tokens [N] drafted children -> accepted [N] bool."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum(-1)
    threshold = torch.minimum(torch.full_like(entropy, rule.epsilon), rule.alpha * torch.exp(-entropy))
    return probs.gather(-1, tokens[:, None])[:, 0] > threshold


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
    node_ok = _node_acceptance(
        logits, candidates, tree.parents, rows, rule
    )  # [B, T] child accepted given its parent
    path_ok = node_ok[:, children.clamp(min=0)] & valid[None]  # [B, P, D]
    accept_lengths = path_ok.long().cumprod(-1).sum(-1)  # [B, P]
    best = accept_lengths.argmax(-1)
    return best, accept_lengths.gather(1, best[:, None])[:, 0]


def _node_acceptance(
    logits: torch.Tensor,
    candidates: torch.Tensor,
    parents: torch.Tensor,
    rows: Sequence[RowSampling],
    rule: TypicalAcceptance,
) -> torch.Tensor:
    """[B, T] bool: node i's token is accepted after its parent parents[i] (node 0: True)."""
    accepted = candidates == greedy_tokens(logits)[:, parents]
    for row, sampling in enumerate(rows):
        if not sampling.speculative:
            accepted[row] = False
        elif not sampling.greedy:
            accepted[row] = typical_accept(logits[row, parents], candidates[row], sampling.temperature, rule)
    accepted[:, 0] = True
    return accepted


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """The argmax over the last dimension (the first index among equal maxima), computed as `max(-1).indices`:
    the same tokens, but on CPU 3-4x faster than `argmax` in bf16 (49,152 logits, 2 cores: 1 row 210 -> 69 µs,
    14 rows 1.5 -> 0.39 ms, 80 rows 8.8 -> 2.2 ms)."""
    return logits.max(-1).indices


def choose_next_tokens(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """logits [B, V] at each row's last accepted node -> next token per row [B]."""
    tokens = greedy_tokens(logits)
    for row, sampling in enumerate(rows):
        if not sampling.greedy:
            tokens[row] = sample_token(logits[row], sampling)
    return tokens


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
    ancestors = None if tree.is_chain else tree.ancestors
    hidden = forward_tokens(
        parts,
        cache,
        candidates,
        tree.depths,
        tree.attention_mask,
        ancestors=ancestors,
        exact_queries=tree.num_nodes,
    )  # [B, T, H]
    logits = parts.lm_head(hidden)  # [B, T, V]
    best, accepted = evaluate(logits, candidates, tree, rows, rule)
    kept_nodes = tree.retrieve_indices[best]  # [B, D + 1], root first, -1 padded
    last_nodes = kept_nodes.gather(1, accepted[:, None])[:, 0]  # [B]
    batch_index = torch.arange(candidates.shape[0], device=candidates.device)
    new_next = choose_next_tokens(logits[batch_index, last_nodes], rows)
    cache.compact(kept_nodes, accepted + 1)
    new_drafts = draft(parts, hidden[batch_index, last_nodes], new_next) if want_drafts else None
    drafted_tokens = candidates.gather(1, kept_nodes.clamp(min=0))[:, 1:].tolist()
    accepted_list = accepted.tolist()
    next_list = new_next.tolist()
    emitted = [
        [*drafted_tokens[row][: accepted_list[row]], next_list[row]] for row in range(candidates.shape[0])
    ]
    return StepOutcome(emitted, accepted_list, new_next, new_drafts)


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
    node_ok = _node_acceptance(logits[:, :spine], candidates[:, :spine], chain_parents, rows, rule)
    accepted = node_ok[:, 1:].long().cumprod(-1).sum(-1)  # [B]; chain node d is node d
    batch_index = torch.arange(candidates.shape[0], device=candidates.device)
    new_next = choose_next_tokens(logits[batch_index, accepted], rows)
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
    return StepOutcome(emitted, accepted_list, new_next, new_drafts, first_draft_by_model=first_by_model)


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
    if next_tokens.shape[0] == 1:
        hidden = _forward_one_token_as_two(parts, cache, next_tokens)
    else:
        root_only = cache.lengths.new_zeros(1)  # depth 0; as a mask only its shape [1] matters
        hidden = forward_tokens(
            parts, cache, next_tokens[:, None], root_only, root_only, exact_queries=1
        )  # [B, 1, H]
    new_next = choose_next_tokens(row_logits(parts.lm_head, hidden[:, 0]), rows)
    cache.advance(1)
    started = time.perf_counter()
    new_drafts = draft(parts, hidden[:, 0], new_next) if want_drafts else None
    return StepOutcome(
        [[token] for token in new_next.tolist()],
        [0] * len(rows),
        new_next,
        new_drafts,
        plain_draft_seconds=time.perf_counter() - started if want_drafts else 0.0,
    )


def row_logits(lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """hidden [N, H] -> logits [N, V]; a single row is padded to two (see _forward_one_token_as_two)."""
    if hidden.shape[0] != 1:
        return lm_head(hidden)
    return lm_head(hidden.repeat(2, 1))[:1]


def _forward_one_token_as_two(
    parts: ModelParts, cache: RowKVCache, next_tokens: torch.Tensor
) -> torch.Tensor:
    """A single-token forward, padded with a throwaway second token -> hidden [1, 1, H].

    With one row of one token, every linear layer is a matrix-vector product, which oneDNN computes with another
    accumulation order than a matrix-matrix product: now and then a bf16 value rounds the other way and greedy
    decoding drifts from what the same text gives inside a batch or a tree. Two rows keep every forward on the
    matrix-matrix path. The padding token sits after the real one (which cannot see it); its KV slot lies past
    the row's length and is overwritten by the next step.
    """
    pair = next_tokens[:, None].expand(-1, 2)
    depths = torch.arange(2, device=next_tokens.device)
    hidden = forward_tokens(parts, cache, pair, depths, _CHAIN_OF_TWO.to(next_tokens.device), exact_queries=2)
    return hidden[:, :1]


_CHAIN_OF_TWO = torch.ones(2, 2, dtype=torch.bool).tril()


def prefill(
    parts: ModelParts, cache: RowKVCache, prompts: Sequence[Sequence[int]], rows: Sequence[RowSampling]
) -> StepOutcome:
    """Write every prompt into its (empty) row of `cache`; choose each row's first token and drafts."""
    longest = max(len(prompt) for prompt in prompts)
    device = cache.lengths.device
    input_ids = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        input_ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    depths = torch.arange(longest, device=device)
    hidden = forward_tokens(parts, cache, input_ids, depths, causal)  # [B, S, H]
    last = torch.tensor([len(prompt) - 1 for prompt in prompts], device=device)
    batch_index = torch.arange(len(prompts), device=device)
    last_hidden = hidden[batch_index, last]  # [B, H]
    next_tokens = choose_next_tokens(row_logits(parts.lm_head, last_hidden), rows)
    cache.compact(depths.expand(len(prompts), -1), last + 1)
    return StepOutcome(
        [[token] for token in next_tokens.tolist()],
        [0] * len(prompts),
        next_tokens,
        draft(parts, last_hidden, next_tokens),
    )
