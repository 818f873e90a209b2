"""Medusa heads: separate modules per layer, forward shapes, recurrent heads, drafting with them."""

from __future__ import annotations

import pytest
import torch
from engine_tiny import random_heads, randomised

from gorgon.engine.drafting.heads import DRAFT_TOPK, MedusaHeads, draft
from gorgon.engine.parts import ModelParts

HIDDEN, VOCAB = 16, 40
NUM_HEADS = 3


def test_layers_are_separate_modules() -> None:
    heads = MedusaHeads(HIDDEN, VOCAB, num_heads=2, num_layers=3, own_lm_heads=True)
    blocks = [heads.heads[0][layer] for layer in range(3)]
    assert len({id(block) for block in blocks}) == 3
    assert len({block.linear.weight.data_ptr() for block in blocks}) == 3


@pytest.mark.parametrize("own_lm_heads", [True, False])
def test_forward_shape_and_shared_lm_head(own_lm_heads: bool) -> None:
    heads = randomised(MedusaHeads(HIDDEN, VOCAB, num_heads=3, own_lm_heads=own_lm_heads))
    lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    hidden = torch.randn(2, 5, HIDDEN)
    logits = heads(hidden, lm_head)
    assert logits.shape == (3, 2, 5, VOCAB)
    if not own_lm_heads:
        expected = lm_head(heads.heads[1](hidden))
        torch.testing.assert_close(logits[1], expected)


def test_recurrent_head_k_reads_head_k_minus_1_state_and_its_token() -> None:
    heads = randomised(MedusaHeads(HIDDEN, VOCAB, num_heads=2, own_lm_heads=False, recurrent=True))
    lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    hidden, embeddings = torch.randn(1, 3, HIDDEN), torch.randn(2, 1, 3, HIDDEN)
    logits = heads(hidden, lm_head, embeddings)
    first = heads.heads[0][0](hidden, embeddings[0])
    second = heads.heads[1][0](first, embeddings[1])
    torch.testing.assert_close(logits[1], lm_head(second))
    changed = embeddings.clone()
    changed[0] += 1.0
    assert not torch.allclose(heads(hidden, lm_head, changed)[1], logits[1])
    with pytest.raises(ValueError, match="token_embeddings"):
        heads(hidden, lm_head)


def test_recurrent_heads_draft_along_their_own_top1_path(tiny_model) -> None:
    heads = random_heads(NUM_HEADS, recurrent=True)
    embed = tiny_model.get_input_embeddings()
    lm_head = tiny_model.get_output_embeddings()
    parts = ModelParts(tiny_model.get_decoder(), lm_head, heads, embed_tokens=embed)
    hidden, next_tokens = torch.randn(2, 64), torch.tensor([5, 77])
    drafts = draft(parts, hidden, next_tokens)  # [B, K, DRAFT_TOPK]
    assert drafts.shape == (2, NUM_HEADS, DRAFT_TOPK)
    # teacher-forced on the path it drafted (the base model's token, then each head's best), the heads give
    # the same rankings
    path = torch.cat([next_tokens[:, None], drafts[:, :-1, 0]], dim=1)  # [B, K]
    embeddings = embed(path).permute(1, 0, 2)[:, :, None]  # [K, B, 1, H]
    logits = heads(hidden[:, None], lm_head, embeddings)[:, :, 0]  # [K, B, V]
    assert torch.equal(logits.topk(DRAFT_TOPK, dim=-1).indices.permute(1, 0, 2), drafts)
    other = draft(parts, hidden, torch.tensor([6, 77]))
    assert not torch.equal(other[0], drafts[0]) and torch.equal(other[1], drafts[1])
