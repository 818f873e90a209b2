from __future__ import annotations

import pytest

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.core.limits import MAX_STOP_SEQUENCE_CHARS
from gorgon.engine.echo import ECHO_IMPOSSIBLE_LOGPROB, EchoEngine, continuation
from gorgon.engine.interface import Engine, FinishReason, GenerationRequest, SamplingParams


def run_to_end(engine: EchoEngine, request: GenerationRequest) -> list:
    engine.add(request)
    events = []
    while engine.num_active:
        events += engine.step()
    return events


def request(prompt: str, engine: EchoEngine, **params) -> GenerationRequest:
    return GenerationRequest("r1", tuple(engine.encode(prompt)), SamplingParams(**params))


def test_echo_engine_satisfies_the_engine_protocol() -> None:
    assert isinstance(EchoEngine(), Engine)


def test_speculative_steps_emit_several_tokens_and_plain_steps_one() -> None:
    engine = EchoEngine()
    fast = run_to_end(engine, request("xy", engine, max_new_tokens=7, use_speculative=True))
    slow = run_to_end(engine, request("xy", engine, max_new_tokens=7, use_speculative=False))
    assert [len(event.token_ids) for event in fast] == [3, 3, 1]
    assert [len(event.token_ids) for event in slow] == [1] * 7
    assert "".join(event.text for event in fast) == "".join(event.text for event in slow) == "z abcde"
    assert fast[-1].finish_reason == FinishReason.LENGTH


def test_text_that_may_start_a_stop_sequence_is_held_back_until_decided() -> None:
    engine = EchoEngine()
    events = run_to_end(
        engine, request("abc", engine, max_new_tokens=20, stop=("fg",), use_speculative=False)
    )
    assert [event.text for event in events] == ["d", "e", "", ""]
    assert events[-1].finish_reason == FinishReason.STOP
    held = run_to_end(engine, request("abc", engine, max_new_tokens=3, stop=("fg",), use_speculative=False))
    assert "".join(event.text for event in held) == "def", (
        "held-back text is released when the length ends it"
    )


def test_a_resumed_request_continues_exactly_as_the_first_attempt() -> None:
    engine = EchoEngine()
    first_part = continuation("abc", 5)
    resumed = GenerationRequest(
        "r1", tuple(engine.encode("abc" + first_part)), SamplingParams(max_new_tokens=7)
    )
    rest = "".join(event.text for event in run_to_end(engine, resumed))
    assert first_part + rest == continuation("abc", 12)


def test_context_overflow_and_cancel() -> None:
    engine = EchoEngine(context_length=16)
    with pytest.raises(ContextOverflowError):
        engine.add(request("x" * 10, engine, max_new_tokens=7))
    engine.add(request("x", engine, max_new_tokens=7))
    engine.cancel("r1")
    assert engine.num_active == 0 and engine.step() == []


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"stop": ("x" * (MAX_STOP_SEQUENCE_CHARS + 1),)},
        {"max_new_tokens": 0},
    ],
)
def test_the_echo_engine_refuses_what_the_model_engine_refuses(params: dict) -> None:
    engine = EchoEngine()
    with pytest.raises(GorgonError):
        engine.add(request("abc", engine, **params))
    assert engine.num_active == 0


def test_a_stop_sequence_spanning_speculative_steps_cuts_the_text() -> None:
    engine = EchoEngine()
    events = run_to_end(engine, request("abc", engine, max_new_tokens=30, stop=("ghijk",)))
    assert "".join(event.text for event in events) == "def"
    assert events[-1].finish_reason == FinishReason.STOP


def test_logprobs_are_certain_with_the_cycles_next_characters_as_alternatives() -> None:
    engine = EchoEngine()
    events = run_to_end(engine, request("xy", engine, max_new_tokens=4, logprobs=3))
    entries = [entry for event in events for entry in event.logprobs]
    assert [len(event.logprobs) for event in events] == [len(event.token_ids) for event in events]
    assert [entry.token for entry in entries] == list("z ab")
    assert all(entry.logprob == 0.0 and entry.token_bytes == tuple(entry.token.encode()) for entry in entries)
    first = entries[0].top
    assert [top.token for top in first] == ["z", " ", "a"]
    assert [top.logprob for top in first] == [0.0, ECHO_IMPOSSIBLE_LOGPROB, ECHO_IMPOSSIBLE_LOGPROB]
    no_top = run_to_end(engine, request("xy", engine, max_new_tokens=2, logprobs=0))
    assert all(entry.top == () for event in no_top for entry in event.logprobs)
    plain = run_to_end(engine, request("xy", engine, max_new_tokens=2))
    assert all(event.logprobs is None for event in plain)


def test_stop_token_ids_outside_the_byte_vocabulary_are_refused() -> None:
    engine = EchoEngine()
    with pytest.raises(GorgonError) as raised:
        engine.add(request("abc", engine, stop_token_ids=(256,)))
    assert raised.value.param == "stop_token_ids"
