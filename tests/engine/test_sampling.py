"""Token choice and draft acceptance per row: greedy argmax, top_p, typical acceptance."""

from __future__ import annotations

import torch

from gorgon.engine.sampling import (
    RowSampling,
    TypicalAcceptance,
    filtered_probabilities,
    greedy_tokens,
    typical_accept,
)


def test_typical_acceptance_on_crafted_distributions() -> None:
    rule = TypicalAcceptance()  # epsilon 0.09, alpha 0.3
    peaked = torch.full((100,), -30.0)
    peaked[0], peaked[1] = 0.0, -3.0  # p(0) ~ 0.95, p(1) ~ 0.047 < 0.09
    flat = torch.zeros(100)  # p = 0.01, H = ln 100, alpha * exp(-H) = 0.003 < 0.01
    logits = torch.stack([peaked, peaked, flat])
    accepted = typical_accept(logits, torch.tensor([0, 1, 57]), 1.0, rule)
    assert accepted.tolist() == [True, False, True]
    strict = TypicalAcceptance(epsilon=0.09, alpha=3.0)  # flat threshold becomes 0.03 > 0.01
    assert typical_accept(logits, torch.tensor([0, 1, 57]), 1.0, strict).tolist() == [True, False, False]


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = filtered_probabilities(logits, RowSampling(temperature=1.0, top_p=0.7))
    torch.testing.assert_close(probs, torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]))


def test_greedy_tokens_are_the_argmax_with_the_first_of_equal_maxima() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(5, 3, 4096) * 3).round().to(torch.bfloat16)  # coarse values: many ties
    logits[0, 0, [7, 99, 4000]] = 100.0
    assert torch.equal(greedy_tokens(logits), logits.argmax(-1))
    assert int(greedy_tokens(logits)[0, 0]) == 7
