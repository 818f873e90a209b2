"""Token choice and draft acceptance per row: greedy argmax, top_p, typical acceptance; every value the API
admits (temperatures down to the smallest positive float, the smallest top_p, seeds at both ends of int64)."""

from __future__ import annotations

import pytest
import torch

from gorgon.core.limits import GREEDY_BELOW_TEMPERATURE
from gorgon.engine.sampling import (
    RowSampling,
    TypicalAcceptance,
    choose_next_tokens,
    filtered_probabilities,
    generator_seed,
    greedy_tokens,
    is_greedy,
    row_generator,
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


def test_the_smallest_top_p_keeps_greedys_token_among_equal_maxima() -> None:
    """bf16 logits tie exactly now and then; the nucleus of one token must be the one greedy decoding picks."""
    torch.manual_seed(1)
    for _ in range(20):
        logits = (torch.randn(49152) * 3).round().to(torch.bfloat16)  # coarse values: many ties
        top = logits.max()
        tied = torch.randperm(49152)[:5]
        logits[tied] = top + 1
        probs = filtered_probabilities(logits, RowSampling(temperature=2.0, top_p=SMALLEST_FLOAT))
        assert int(probs.argmax()) == int(greedy_tokens(logits)) == int(tied.min())
        assert int((probs > 0).sum()) == 1


SMALLEST_FLOAT = 5e-324  # the smallest positive double: the schema admits it as a temperature and as a top_p


@pytest.mark.parametrize("temperature", [SMALLEST_FLOAT, 1e-40, 9.9e-6, 0.0])
def test_temperatures_below_the_threshold_are_greedy(temperature: float) -> None:
    logits = torch.randn(3, 500) * 8
    rows = [RowSampling(temperature=temperature, generator=torch.Generator().manual_seed(1))] * 3
    tokens, failures = choose_next_tokens(logits, rows)
    assert is_greedy(temperature) and temperature < GREEDY_BELOW_TEMPERATURE
    assert failures == {}
    assert torch.equal(tokens, logits.argmax(-1))


@pytest.mark.parametrize("temperature", [GREEDY_BELOW_TEMPERATURE, 1e-3, 1.0, 2.0])
@pytest.mark.parametrize("top_p", [SMALLEST_FLOAT, 1e-300, 0.5, 1.0])
def test_every_admitted_temperature_and_top_p_gives_a_distribution(temperature: float, top_p: float) -> None:
    logits = (torch.randn(49152) * 12).to(
        torch.bfloat16
    )  # a vocabulary's worth of bf16 logits, as the model gives
    sampling = RowSampling(temperature=temperature, top_p=top_p, generator=torch.Generator().manual_seed(3))
    probs = filtered_probabilities(logits, sampling)
    assert torch.isfinite(probs).all()
    assert abs(float(probs.sum()) - 1.0) < 1e-4
    tokens, failures = choose_next_tokens(logits[None], [sampling])
    assert failures == {} and float(probs[int(tokens[0])]) > 0
    if top_p < 1e-100:
        assert int(tokens[0]) == int(logits.float().argmax()), "the smallest top_p keeps only the top token"


@pytest.mark.parametrize("seed", [-(2**63), -1, 0, 2**63 - 1])
def test_seeds_at_both_ends_of_int64_seed_a_generator_deterministically(seed: int) -> None:
    assert 0 <= generator_seed(seed) < 2**64
    logits = torch.randn(1, 1000)

    def draw() -> list[int]:
        sampling = RowSampling(temperature=1.0, generator=row_generator(seed, torch.device("cpu")))
        return [int(choose_next_tokens(logits, [sampling])[0][0]) for _ in range(8)]

    assert draw() == draw()


def test_negative_seeds_map_to_distinct_generator_seeds() -> None:
    seeds = [-(2**63), -1, 0, 1, 2**63 - 1]
    assert len({generator_seed(seed) for seed in seeds}) == len(seeds)


def test_a_row_whose_sampling_fails_is_reported_alone() -> None:
    logits = torch.randn(3, 100)
    logits[1, 5] = float("nan")  # non-finite logits: multinomial refuses them
    rows = [RowSampling(temperature=1.0, generator=torch.Generator().manual_seed(row)) for row in range(3)]
    tokens, failures = choose_next_tokens(logits, rows)
    assert list(failures) == [1] and "sampling failed" in failures[1]
    assert tokens.shape == (3,)
