"""Medusa heads and drafting with them: each head proposes its top-k tokens for one position ahead.

A head is `num_layers` residual blocks `ResBlock(x) = x + SiLU(Linear(x))`, then a vocabulary projection.
Two variants exist:

* own projections (FasterDecoding's released heads): head k has its own `Linear(H, V, bias=False)`;
* shared projection (TGI's "MedusaHeadV2"): every head reuses the base model's `lm_head`, and may draft over a
  draft vocabulary (its most frequent tokens) instead of the whole vocabulary.

Either variant can be *recurrent* (gorgon's, after Hydra and ReDrafter): head k's first block also reads the
embedding of the token drafted before it, and its state comes from head k - 1 instead of h_t:
`s_0 = h_t`, `s_{k+1} = s_k + SiLU(Linear([s_k; E(x_{k+1})]))` (then the head's other ResBlocks), where x_1 is the
token the base model chose and x_{k+1} head k - 1's draft. Head k then knows the path it continues, which a
Medusa-1 head (it sees only h_t) does not. Its first linear is `[H, 2H]` wide. The checkpoint format is in
engine/drafting/checkpoint.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from gorgon.engine.parts import ModelParts

DRAFT_TOPK = 10  # top-k kept per Medusa head (the widest shipped tree uses rank 9)


class ResBlock(nn.Module):
    """x + SiLU(Linear(x)); the linear starts at zero so an untrained block is the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class RecurrentBlock(nn.Module):
    """state + SiLU(Linear([state; token_embedding])); starts as the identity on the state, like ResBlock."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        self.act = nn.SiLU()

    def forward(self, state: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        return state + self.act(self.linear(torch.cat([state, token_embedding], dim=-1)))


class MedusaHeads(nn.Module):
    """K Medusa heads. `heads[k]` is a Sequential of `num_layers` blocks (+ its own projection if any); with
    `recurrent`, block 0 of each head is a RecurrentBlock (see the module docstring)."""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        num_heads: int,
        num_layers: int = 1,
        *,
        own_lm_heads: bool,
        recurrent: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < int(recurrent):
            raise ValueError(
                f"need num_heads >= 1 and num_layers >= {int(recurrent)}, got {num_heads}, {num_layers}"
            )
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.own_lm_heads = own_lm_heads
        self.recurrent = recurrent
        self.heads = nn.ModuleList(self._build_head() for _ in range(num_heads))

    def _build_head(self) -> nn.Sequential:
        # A fresh block per layer: never `[ResBlock(h)] * n`, which shares one module n times.
        layers: list[nn.Module] = [ResBlock(self.hidden_size) for _ in range(self.num_layers)]
        if self.recurrent:
            layers[0] = RecurrentBlock(self.hidden_size)
        if self.own_lm_heads:
            layers.append(nn.Linear(self.hidden_size, self.vocab_size, bias=False))
        return nn.Sequential(*layers)

    def head_state(
        self, k: int, state: torch.Tensor, token_embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Head k's blocks over `state` [..., H] (recurrent heads also read the previous token's embedding)."""
        blocks = list(self.heads[k].children())[: self.num_layers]
        if self.recurrent:
            if token_embedding is None:
                raise ValueError("recurrent heads need the embedding of the token each head continues")
            state = blocks.pop(0)(state, token_embedding)
        for block in blocks:
            state = block(state)
        return state

    def project(self, k: int, state: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Head k's logits from its state: its own projection, or the shared lm_head."""
        if not self.own_lm_heads:
            return lm_head(state)
        return list(self.heads[k].children())[self.num_layers](state)

    def forward(
        self, hidden: torch.Tensor, lm_head: nn.Module, token_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden: [B, S, H] (last hidden state of the base model) -> logits: [K, B, S, V].

        Recurrent heads also take token_embeddings [K, B, S, H]: entry k embeds the token head k continues (the
        base model's choice for k = 0, the true or drafted token before it otherwise).
        """
        if not self.recurrent:
            return torch.stack(
                [self.project(k, self.head_state(k, hidden), lm_head) for k in range(self.num_heads)]
            )
        if token_embeddings is None:
            raise ValueError("recurrent heads need token_embeddings [K, B, S, H]")
        outputs, state = [], hidden
        for k in range(self.num_heads):
            state = self.head_state(k, state, token_embeddings[k])
            outputs.append(self.project(k, state, lm_head))
        return torch.stack(outputs)

    def state_dict_faster_decoding(self) -> dict[str, torch.Tensor]:
        """Weights under FasterDecoding's key names (`{head}.{layer}.linear.weight`, `{head}.{L}.weight`)."""
        # nn.ModuleList keys are "heads.{k}.{layer}..."; FasterDecoding's are "{k}.{layer}...".
        return {
            name.removeprefix("heads."): tensor.detach().contiguous()
            for name, tensor in self.state_dict().items()
        }


@dataclass(frozen=True, slots=True)
class DraftVocabulary:
    """The tokens heads that share the lm_head draft from (FR-Spec: the most frequent tokens of the model's own
    output), with the lm_head rows of just those tokens. Drafting over them instead of the whole vocabulary
    costs a fraction of the projection; the output is unchanged, since verification is exact."""

    token_ids: torch.Tensor  # [N] long
    projection: nn.Module  # H -> N, rows token_ids of the lm_head (nn.Linear or its packed copy)

    @classmethod
    def from_lm_head(cls, lm_head: nn.Module, token_ids: torch.Tensor) -> DraftVocabulary:
        weight = lm_head.get_parameter("weight")
        projection = nn.Linear(weight.shape[1], token_ids.numel(), bias=False, device=weight.device)
        with torch.no_grad():
            projection.weight = nn.Parameter(
                weight.detach()[token_ids.to(weight.device)], requires_grad=False
            )
        return cls(token_ids.to(weight.device), projection)


def draft(parts: ModelParts, hidden: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor | None:
    """hidden: [B, H] at each row's last accepted token, next_tokens [B] the tokens it chose
    -> the heads' top-k drafts [B, K, DRAFT_TOPK] (None without heads)."""
    heads = parts.heads
    if heads is None:
        return None
    if heads.recurrent:
        return _draft_recurrent(parts, heads, hidden, next_tokens)
    if heads.own_lm_heads:
        logits = heads(hidden[:, None, :], parts.lm_head)[:, :, 0]  # [K, B, V]
        return logits.topk(DRAFT_TOPK, dim=-1).indices.permute(1, 0, 2).contiguous()
    # Heads sharing one projection: project all heads' states in one product (one pass over its weights).
    projected = torch.stack([head(hidden) for head in heads.heads])  # [K, B, H]
    vocabulary = parts.draft_vocabulary
    projection = parts.lm_head if vocabulary is None else vocabulary.projection
    ranks = projection(projected).topk(DRAFT_TOPK, dim=-1).indices.permute(1, 0, 2)  # [B, K, DRAFT_TOPK]
    return (ranks if vocabulary is None else vocabulary.token_ids[ranks]).contiguous()


def _draft_recurrent(
    parts: ModelParts, heads: MedusaHeads, hidden: torch.Tensor, next_tokens: torch.Tensor
) -> torch.Tensor:
    """Recurrent heads draft along their own top-1 path: head k continues next_tokens and heads 0..k-1's best
    drafts, so row b's drafts [K, DRAFT_TOPK] fit trees whose nodes branch off that path only
    (tree.spine_choices)."""
    if parts.embed_tokens is None:
        raise ValueError("recurrent heads need the model's input embeddings")
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
