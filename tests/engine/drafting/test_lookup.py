"""Context lookup drafts: the n-gram index, the drafts it puts on the tree's chain, and the engine with them."""

from __future__ import annotations

import pytest
import torch
from engine_tiny import looping_llama, random_heads
from pydantic import ValidationError

from gorgon.engine.config import EngineSettings
from gorgon.engine.drafting.lookup import ContextLookup, with_lookup_drafts
from gorgon.engine.interface import GenerationRequest, SamplingParams, TokenEvent


def _lookup(tokens: list[int], min_ngram: int = 2, max_ngram: int = 4) -> ContextLookup:
    return ContextLookup(tokens, min_ngram=min_ngram, max_ngram=max_ngram)


def test_a_repeated_ngram_proposes_what_followed_its_latest_occurrence() -> None:
    lookup = _lookup([1, 2, 3, 9, 1, 2, 3, 8, 5, 1, 2, 3])
    assert lookup.propose(3) == [8, 5, 1]


def test_the_longest_matching_suffix_wins_over_a_more_recent_shorter_one() -> None:
    lookup = _lookup([7, 2, 3, 4, 0, 2, 3, 5, 7, 2, 3])
    assert lookup.propose(2) == [4, 0]  # (7, 2, 3) occurred at the start; (2, 3) -> 5 is more recent
    assert _lookup([7, 2, 3, 4, 0, 2, 3, 5, 7, 2, 3], max_ngram=2).propose(2) == [5, 7]


def test_no_proposal_without_an_earlier_occurrence_of_min_ngram_tokens() -> None:
    assert _lookup([1, 2, 3, 4, 5, 3]).propose(4) == []  # only the 1-gram (3) occurred before
    assert _lookup([1, 2, 3, 4, 5, 3], min_ngram=1).propose(2) == [4, 5]
    assert _lookup([]).propose(4) == []


def test_a_proposal_stops_where_the_text_ends() -> None:
    assert _lookup([4, 4, 4]).propose(5) == [4]  # (4, 4) ended at slot 2 and was followed by one 4 only


def test_tokens_added_one_by_one_index_like_tokens_given_at_once() -> None:
    tokens = [5, 1, 2, 5, 1, 3, 5, 1, 2, 9, 5, 1]
    grown = _lookup(tokens[:3])
    for token in tokens[3:]:
        grown.extend([token])
    at_once = _lookup(tokens)
    assert grown.propose(4) == at_once.propose(4) == [2, 9, 5, 1]


def test_a_proposal_can_continue_after_a_token_not_yet_in_the_text() -> None:
    lookup = _lookup([1, 2, 3, 4, 1, 2])
    assert lookup.propose(2) == [3, 4]
    assert lookup.propose(2, after=[3]) == [4, 1]


def test_a_bad_ngram_range_is_refused() -> None:
    with pytest.raises(ValueError, match="min_ngram"):
        _lookup([1, 2], min_ngram=3, max_ngram=2)
    with pytest.raises(ValidationError, match="lookup_min_ngram"):
        EngineSettings(lookup_min_ngram=5, lookup_max_ngram=3)


def test_a_proposal_takes_rank_0_of_each_head_and_the_heads_drafts_move_down() -> None:
    draft_topk = torch.tensor(
        [[[10, 11, 12], [20, 21, 22], [30, 31, 32]], [[40, 41, 42], [50, 51, 52], [60, 61, 62]]]
    )
    lookups = [_lookup([7, 8, 21, 9, 7, 8]), None]  # row 0 proposes 21, 9, 7; row 1 has no lookup
    drafted = with_lookup_drafts(draft_topk, lookups, None)
    assert drafted[0].tolist() == [[21, 10, 11], [9, 20, 21], [7, 30, 31]]
    assert drafted[1].tolist() == draft_topk[1].tolist()


def test_a_proposed_token_the_heads_also_drafted_is_not_repeated() -> None:
    draft_topk = torch.tensor([[[10, 11, 12], [20, 21, 22]]])
    drafted = with_lookup_drafts(draft_topk, [_lookup([1, 2, 11, 21, 1, 2])], None)
    assert drafted[0].tolist() == [[11, 10, 12], [21, 20, 22]]


def test_a_first_draft_from_the_base_model_stays_and_the_proposal_continues_after_it() -> None:
    draft_topk = torch.tensor([[[3, 11, 12], [20, 21, 22], [30, 31, 32]]])
    lookup = _lookup([1, 2, 3, 4, 5, 1, 2])  # after the model's 3: (2, 3) -> 4, 5
    by_model = torch.tensor([True])
    assert with_lookup_drafts(draft_topk, [lookup], by_model)[0].tolist() == [
        [3, 11, 12],
        [4, 20, 21],
        [5, 30, 31],
    ]
    assert with_lookup_drafts(draft_topk, [lookup], torch.tensor([False]))[0, 0, 0] == 3  # (1, 2) -> 3


def test_rows_without_a_match_keep_the_heads_drafts_unchanged() -> None:
    draft_topk = torch.tensor([[[10, 11], [20, 21]]])
    assert with_lookup_drafts(draft_topk, [_lookup([1, 2, 3])], None) is draft_topk


# --- the engine -------------------------------------------------------------------------------------------------

LOOPING_PROMPTS = {"a": (5, 17, 99), "b": (200, 3, 3, 141, 90), "c": (7, 8, 9, 10, 11, 12, 13)}


def _run(engine, max_new_tokens: int = 48) -> dict[str, list[TokenEvent]]:
    for name, prompt in LOOPING_PROMPTS.items():
        engine.add(GenerationRequest(name, prompt, SamplingParams(max_new_tokens=max_new_tokens)))
    return _drain(engine)


def _tokens(collected: dict[str, list[TokenEvent]]) -> dict[str, list[int]]:
    return {
        name: [token for event in events for token in event.token_ids] for name, events in collected.items()
    }


def _accepted(collected: dict[str, list[TokenEvent]]) -> int:
    return sum(event.accepted_tokens for events in collected.values() for event in events)


@pytest.mark.parametrize("recurrent", [False, True])
def test_lookup_drafts_accept_more_of_looping_text_and_leave_greedy_output_unchanged(
    make_engine, recurrent: bool
) -> None:
    model = looping_llama()
    heads = random_heads(recurrent=recurrent)
    plain = _run(make_engine(model=model))
    without = _run(make_engine(heads, model=model, cycle_shapes=True, lookup_drafts=False))
    with_lookup = _run(make_engine(heads, model=model, cycle_shapes=True))
    assert _tokens(with_lookup) == _tokens(without) == _tokens(plain)
    assert _accepted(with_lookup) > 1.1 * _accepted(without)


def test_rows_joining_a_running_batch_each_look_up_their_own_text(make_engine) -> None:
    model = looping_llama()
    heads = random_heads(recurrent=True)
    plain = _tokens(_run(make_engine(model=model), max_new_tokens=40))

    def joining_late(**settings: object) -> dict[str, list[TokenEvent]]:
        engine = make_engine(heads, model=model, cycle_shapes=True, **settings)
        requests = [
            GenerationRequest(n, p, SamplingParams(max_new_tokens=40)) for n, p in LOOPING_PROMPTS.items()
        ]
        engine.add(requests[0])
        collected = _drain(engine, steps=6)
        for request in requests[1:]:
            engine.add(request)
        for name, events in _drain(engine).items():
            collected.setdefault(name, []).extend(events)
        return collected

    with_lookup, without = joining_late(), joining_late(lookup_drafts=False)
    assert _tokens(with_lookup) == _tokens(without) == plain
    assert _accepted(with_lookup) > 1.1 * _accepted(without)


def _drain(engine, steps: int | None = None) -> dict[str, list[TokenEvent]]:
    collected: dict[str, list[TokenEvent]] = {}
    taken = 0
    while engine.num_active and (steps is None or taken < steps):
        for event in engine.step():
            collected.setdefault(event.request_id, []).append(event)
        taken += 1
    return collected
