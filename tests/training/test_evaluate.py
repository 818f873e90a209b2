from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from gorgon.engine.medusa import MedusaHeads
from gorgon.training.evaluate import MAX_RANK, grow_tree, head_accuracies, target_ranks, verify_cost_ms
from gorgon.training.trainer import IGNORE, Positions


def _accepted_tokens(ranks: torch.Tensor, choices: list[tuple[int, ...]]) -> float:
    """Mean tokens per greedy step, counted directly: 1 + depth of the deepest node matching the truth."""
    total = 0
    for row in ranks.tolist():
        deepest = max((len(path) for path in choices if list(path) == row[: len(path)]), default=0)
        total += 1 + deepest
    return total / ranks.shape[0]


def test_target_ranks_count_the_logits_above_the_true_token() -> None:
    heads = MedusaHeads(4, 6, num_heads=2, own_lm_heads=True)
    with torch.no_grad():
        for head in heads.heads:
            head[0].linear.bias.zero_()
        heads.heads[0][1].weight.copy_(
            torch.eye(6, 4) * torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0], [0.0]])
        )
        heads.heads[1][1].weight.copy_(-heads.heads[0][1].weight)
    hidden = torch.ones(1, 4)
    # the zero ResBlock is the identity, so head 0's logits are [5, 4, 3, 2, 0, 0]: token 2 has rank 2
    positions = Positions(hidden=hidden, tokens=torch.tensor([1]), targets=torch.tensor([[2, IGNORE]]))
    ranks = target_ranks(heads, nn.Identity(), positions)
    assert ranks.tolist() == [[2, MAX_RANK]]


def test_accuracies_skip_positions_without_a_target() -> None:
    ranks = torch.tensor([[0, 3], [1, MAX_RANK], [0, 0], [7, MAX_RANK]])
    targets = torch.tensor([[5, 5], [5, IGNORE], [5, 5], [5, IGNORE]])
    first, second = head_accuracies(ranks, targets)
    assert (first.top1, first.top5, first.positions) == (0.5, 0.75, 4)
    assert (second.top1, second.top5, second.positions) == (0.5, 1.0, 2)


def test_verify_cost_interpolates_the_measured_table() -> None:
    table = ((1, 40.0), (8, 53.0), (16, 68.0), (64, 109.0))
    assert verify_cost_ms(1, table) == 40.0
    assert verify_cost_ms(16, table) == 68.0
    assert verify_cost_ms(12, table) == pytest.approx(60.5)
    assert verify_cost_ms(80, table) > verify_cost_ms(64, table)
    assert verify_cost_ms(64) > verify_cost_ms(40) > verify_cost_ms(1)  # the default table, extrapolated


@pytest.fixture
def correlated_ranks() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, 4, (2000, 1), generator=generator)
    noise = torch.randint(0, 3, (2000, 2), generator=generator)
    return torch.cat([first, (first + noise).clamp(max=MAX_RANK)], dim=1)


def test_every_tree_of_the_search_is_a_valid_prefix_closed_tree(correlated_ranks: torch.Tensor) -> None:
    search = grow_tree(correlated_ranks, max_nodes=30)
    for size in range(1, len(search.choices) + 1):
        nodes = set(search.choices[:size])
        assert all(path[:-1] in nodes for path in nodes if len(path) > 1)


def test_expected_tokens_per_step_equal_the_acceptance_counted_directly(
    correlated_ranks: torch.Tensor,
) -> None:
    search = grow_tree(correlated_ranks, max_nodes=30)
    for point in search.curve[1:]:
        choices = list(search.choices[: point.nodes])
        assert point.tokens_per_step == pytest.approx(_accepted_tokens(correlated_ranks, choices))


def test_greedy_growth_beats_any_other_tree_of_the_same_small_size(correlated_ranks: torch.Tensor) -> None:
    search = grow_tree(correlated_ranks, max_nodes=3)
    greedy = search.curve[3].tokens_per_step
    candidates = [path for depth in (1, 2, 3) for path in itertools.product(range(4), repeat=depth)]
    best_other = 0.0
    for trio in itertools.combinations(candidates, 3):
        nodes = set(trio)
        if all(path[:-1] in nodes for path in nodes if len(path) > 1):
            best_other = max(best_other, _accepted_tokens(correlated_ranks, list(trio)))
    assert greedy == pytest.approx(best_other)


def test_the_chosen_size_maximises_speed_over_the_cost_table(correlated_ranks: torch.Tensor) -> None:
    search = grow_tree(correlated_ranks, max_nodes=40)
    assert search.best.relative_speed == max(point.relative_speed for point in search.curve)
    assert search.best_choices == [list(path) for path in search.choices[: search.best.nodes]]
    free = grow_tree(correlated_ranks, max_nodes=40, cost_table=((1, 40.0), (64, 40.0)))
    assert free.best.nodes >= search.best.nodes


def test_spine_only_growth_branches_off_the_top1_chain_only() -> None:
    generator = torch.Generator().manual_seed(0)
    ranks = torch.randint(0, 3, (400, 3), generator=generator)
    search = grow_tree(ranks, max_nodes=12, spine_only=True)
    assert search.choices
    assert all(not any(path[:-1]) for path in search.choices)
    unrestricted = grow_tree(ranks, max_nodes=12)
    assert any(any(path[:-1]) for path in unrestricted.choices)


def test_only_trees_branching_deeper_than_the_chain_pay_for_branching() -> None:
    """Spine trees run as lookahead trees (one masked window, no key gather): siblings stay in them whatever the
    branching cost, while a tree with a node deeper off the chain is cut back before it."""
    generator = torch.Generator().manual_seed(1)
    ranks = torch.where(torch.rand(500, 3, generator=generator) < 0.6, 0, torch.randint(1, 4, (500, 3)))
    spine = grow_tree(ranks, max_nodes=12, spine_only=True, branching_cost_ms=1000.0)
    assert any(any(path) for path in spine.best_choices)
    free = grow_tree(ranks, max_nodes=24)
    assert any(any(path[:-1]) for path in free.best_choices)
    costly = grow_tree(ranks, max_nodes=24, branching_cost_ms=1000.0)
    assert all(not any(path[:-1]) for path in costly.best_choices)
    assert costly.best.tokens_per_step < free.best.tokens_per_step
