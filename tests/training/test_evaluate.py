from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from gorgon.engine.drafting.heads import MedusaHeads
from gorgon.training.evaluate import (
    MAX_RANK,
    accepted_drafts,
    decoded_tokens_per_step,
    grow_tree,
    head_accuracies,
    relative_speed,
    target_ranks,
    verify_cost_ms,
)
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


def test_a_decode_skips_the_positions_its_steps_accepted() -> None:
    chain = [(0,), (0, 0), (0, 0, 0)]
    accepted = [3, 0, 0, 0, 0, 2, 0, 0]  # drafts the chain accepts at each position
    ranks = torch.tensor([[0] * a + [MAX_RANK] * (3 - a) for a in accepted])
    # steps at positions 0 (4 tokens), 4 (1) and 5 (the last 3): 8 tokens in 3 steps
    assert decoded_tokens_per_step(ranks, chain) == pytest.approx(8 / 3)
    assert 1 + accepted_drafts(ranks, chain).float().mean().item() == pytest.approx(
        1.625
    )  # the position mean


def test_each_response_is_decoded_from_its_own_first_position() -> None:
    chain = [(0,), (0, 0)]
    ranks = torch.tensor([[MAX_RANK, 0], [0, 0], [0, MAX_RANK], [MAX_RANK, 0], [MAX_RANK, 0]])
    # accepted 0, 2 | 1, 0, 0: steps at 0, 1 | 0, 2: 5 tokens in 4 steps; as one stream: steps at 0, 1, 4
    assert decoded_tokens_per_step(ranks, chain, (2, 3)) == pytest.approx(5 / 4)
    assert decoded_tokens_per_step(ranks, chain) == pytest.approx(5 / 3)


def test_a_lookahead_sibling_pays_off_in_the_next_step() -> None:
    """Spine tree: chain (0,), (0, 0) and the sibling (1,). At position 0 head 0 misses, but the token after the
    step is the sibling's: the next step (position 1) gets the base model's token for free, then the heads'
    drafts from position 2; the branching tree of the same nodes would have accepted the sibling at once."""
    ranks = torch.tensor([[1, MAX_RANK], [MAX_RANK, MAX_RANK], [0, MAX_RANK], [MAX_RANK, MAX_RANK]])
    spine = [(0,), (0, 0), (1,)]
    # lookahead: step at 0 emits 1 token; step at 1 emits the base's token, head 0 right at 2: 3 tokens; at 4 done
    assert decoded_tokens_per_step(ranks, spine) == pytest.approx(4 / 2)
    without_sibling = [(0,), (0, 0)]  # steps at 0, 1, 2 (2 tokens): 4 tokens in 3 steps
    assert decoded_tokens_per_step(ranks, without_sibling) == pytest.approx(4 / 3)


def test_accepted_drafts_are_the_depth_of_the_deepest_matching_node() -> None:
    ranks = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 2, 0], [3, 3, 3]])
    assert accepted_drafts(ranks, [(0,), (1,), (0, 0), (0, 0, 1)]).tolist() == [3, 1, 1, 0]


def test_the_search_judges_speed_on_decoded_tokens_when_acceptance_clusters() -> None:
    """Half the text easy (every head right), half hard (every head wrong): the mean over positions says 2.5 tokens
    per step for the 3-deep chain, a decode gets 400 tokens in 100 steps, then 400 in 400 steps: 1.6."""
    ranks = torch.cat([torch.zeros(400, 3, dtype=torch.long), torch.full((400, 3), MAX_RANK)])
    table = ((1, 40.0), (64, 40.0))  # verification free: the deepest chain is the fastest
    search = grow_tree(ranks, max_nodes=3, cost_table=table, response_positions=(800,))
    assert search.best.nodes == 3
    assert search.best.tokens_per_step == pytest.approx(2.5)
    assert search.best.decoded_tokens_per_step == pytest.approx(1.6)
    assert search.best.relative_speed == pytest.approx(relative_speed(1.6, 3, table))
