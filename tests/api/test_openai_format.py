"""OpenAI's response shapes built from chunks: choice indexes, logprobs of completions and chat, usage in
stream chunks."""

from __future__ import annotations

from gorgon.api.openai_format import ChoiceResult, ReplyShape, chat_logprobs, completion_logprobs
from gorgon.core.protocol import WireLogprob, WireTopLogprob

HELLO = WireLogprob(
    "Hello",
    -0.25,
    tuple(b"Hello"),
    (WireTopLogprob("Hello", -0.25, tuple(b"Hello")), WireTopLogprob("Hi", -1.5, (72, 105))),
)
WORLD = WireLogprob(
    " wörld", -2.0, tuple(" wörld".encode()), (WireTopLogprob(" world", -0.5, tuple(b" world")),)
)


def test_completion_logprobs_are_parallel_lists_with_the_chosen_token_among_the_top() -> None:
    assert completion_logprobs([HELLO, WORLD], text_offset=3) == {
        "tokens": ["Hello", " wörld"],
        "token_logprobs": [-0.25, -2.0],
        "top_logprobs": [{"Hello": -0.25, "Hi": -1.5}, {" wörld": -2.0, " world": -0.5}],
        "text_offset": [3, 8],
    }


def test_chat_logprobs_carry_bytes_and_only_the_alternatives_asked_for() -> None:
    assert chat_logprobs([WORLD]) == {
        "content": [
            {
                "token": " wörld",
                "logprob": -2.0,
                "bytes": list(" wörld".encode()),
                "top_logprobs": [{"token": " world", "logprob": -0.5, "bytes": list(b" world")}],
            }
        ]
    }


def test_logprobs_appear_only_when_asked_and_then_even_for_no_tokens() -> None:
    plain = ReplyShape.new("completion", "cmpl-1", "m")
    asked = ReplyShape.new("chat", "chatcmpl-1", "m", logprobs=True)
    assert plain.delta(0, "a", None, logprobs=[HELLO])["choices"][0]["logprobs"] is None
    assert asked.delta(2, "", None, logprobs=[])["choices"][0] == {
        "index": 2,
        "delta": {"content": ""},
        "logprobs": {"content": []},
        "finish_reason": None,
    }


def test_a_whole_reply_lists_its_choices_with_their_indexes_and_one_usage() -> None:
    shape = ReplyShape.new("completion", "cmpl-1", "m", logprobs=True)
    reply = shape.whole(
        [ChoiceResult(0, "Hello", "length", (HELLO,)), ChoiceResult(1, "Hi", "stop", ())], 5, 3
    )
    assert [(choice["index"], choice["text"], choice["finish_reason"]) for choice in reply["choices"]] == [
        (0, "Hello", "length"),
        (1, "Hi", "stop"),
    ]
    assert reply["choices"][0]["logprobs"]["text_offset"] == [0]
    assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_with_usage_asked_every_chunk_says_null_and_the_last_has_no_choices() -> None:
    shape = ReplyShape.new("chat", "chatcmpl-1", "m", usage_in_chunks=True)
    first = shape.delta(0, "a", None, first=True)
    assert first["usage"] is None and first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert shape.usage_chunk(4, 2)["choices"] == []
    assert "usage" not in ReplyShape.new("chat", "chatcmpl-1", "m").delta(0, "a", None)
