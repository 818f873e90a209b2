"""The scheduler: admission by token budget, prefill before decoding, the shape of a decoding step."""

from __future__ import annotations

from engine_tiny import random_heads

from gorgon.engine.echo import EchoEngine
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.engine.scheduler import Decode, budget_tokens, fits_token_budget


def _request(name: str, prompt_tokens: int, max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        name, tuple(range(1, prompt_tokens + 1)), SamplingParams(max_new_tokens=max_new_tokens)
    )


def test_a_request_holds_its_prompt_and_every_token_it_may_generate() -> None:
    assert budget_tokens(_request("a", 3, 30)) == 33


def test_a_request_fits_when_the_admitted_ones_leave_it_room() -> None:
    first, second = _request("a", 3, 30), _request("b", 3, 14)
    assert fits_token_budget(second, [first], 50)
    assert not fits_token_budget(_request("c", 3, 15), [first], 50)
    assert fits_token_budget(_request("c", 3, 15), [first], None)


def test_an_empty_batch_takes_a_request_over_the_budget() -> None:
    assert fits_token_budget(_request("big", 100, 100), [], 50)


def test_engines_count_admitted_requests_until_they_finish(make_engine) -> None:
    for engine in (EchoEngine(), make_engine()):
        first, second = _request("a", 3, 30), _request("b", 3, 30)
        assert engine.admits(first, 50)
        engine.add(first)
        assert not engine.admits(second, 50)
        assert engine.admits(second, None)
        engine.cancel("a")
        assert engine.admits(second, 50)


def test_a_step_with_joining_rows_prefills_them_and_decodes_nothing(make_engine) -> None:
    engine = make_engine(random_heads(), max_batch_size=4)
    engine.add(_request("a", 4, 8))
    engine.add(_request("b", 5, 8))
    assert {event.request_id for event in engine.step()} == {"a", "b"}
    engine.add(_request("c", 6, 8))
    assert [event.request_id for event in engine.step()] == ["c"]
    assert {event.request_id for event in engine.step()} == {"a", "b", "c"}


def test_requests_arriving_together_are_prefilled_a_chunk_of_prompt_tokens_at_a_time(make_engine) -> None:
    engine = make_engine(prefill_chunk_tokens=16, max_batch_size=8)
    for name in "abcde":
        engine.add(_request(name, 6, 8))
    engine.add(_request("long", 40, 8))  # longer than a chunk: chunked over later steps, joins freely
    assert [event.request_id for event in engine.step()] == ["a", "b"]  # 12 tokens; a third would make 18
    assert [event.request_id for event in engine.step()] == ["c", "d"]
    assert [event.request_id for event in engine.step()] == ["e"]
    assert [row.request_id for row in engine.scheduler.chunked] == ["long"]
    assert {event.request_id for event in engine.step()} == set()  # the long prompt's first chunk
    assert {event.request_id for event in engine.step()} == set("abcde")


def test_a_batch_without_drafts_decodes_plain(make_engine) -> None:
    engine = make_engine(max_batch_size=2)
    engine.add(_request("a", 4, 8))
    engine.step()
    step = engine.scheduler.next_step(engine.batch)
    assert isinstance(step, Decode) and step.batch is engine.batch
    assert step.shape.num_nodes == 1 and not step.want_drafts
