"""Choices of one request: the candidates it enqueues (ids, prompts, seeds), how `best_of` ranks them, usage,
the sampling parameters every candidate carries, and the merge of their streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from gorgon.api.choices import (
    Candidate,
    all_or_none,
    chosen,
    cumulative_logprob,
    fan_out,
    indexed,
    merged,
    usage_of,
)
from gorgon.api.errors import OpenAIError
from gorgon.api.schemas import ChatCompletionRequest, CompletionRequest, parse_body
from gorgon.api.serving import wire_sampling
from gorgon.core.protocol import Chunk, RequestPayload, WireLogprob, WireSampling

INT64_MAX = 2**63 - 1


def base_payload(seed: int | None = None, *, prompt: str | None = "p") -> RequestPayload:
    return RequestPayload(
        "cmpl-1",
        "m",
        WireSampling(max_tokens=4, seed=seed),
        deadline=0.0,
        stream=False,
        reply_to="replies",
        prompt=prompt,
        messages=None if prompt else (("user", "hi"),),
    )


def final(
    request_id: str, logprobs: tuple[float, ...] = (), prompt_tokens: int = 3, tokens: int = 4
) -> Chunk:
    entries = tuple(WireLogprob("t", logprob, (116,)) for logprob in logprobs)
    return Chunk(
        request_id,
        1,
        0,
        text=request_id,
        final=True,
        finish_reason="length",
        prompt_tokens=prompt_tokens,
        completion_tokens=tokens,
        logprobs=entries,
    )


def test_one_choice_keeps_the_reply_id_and_its_seed() -> None:
    (only,) = fan_out(base_payload(seed=7), ("p",), 1)
    assert only == Candidate(0, 0, base_payload(seed=7))


def test_candidates_are_numbered_across_prompts_with_consecutive_seeds() -> None:
    candidates = fan_out(base_payload(seed=7), ("a", "b"), 3)
    assert [c.payload.request_id for c in candidates] == [f"cmpl-1-{k}" for k in range(6)]
    assert [(c.prompt_index, c.number, c.payload.prompt) for c in candidates] == [
        (0, 0, "a"),
        (0, 1, "a"),
        (0, 2, "a"),
        (1, 0, "b"),
        (1, 1, "b"),
        (1, 2, "b"),
    ]
    assert [c.payload.sampling.seed for c in candidates] == [7, 8, 9, 7, 8, 9]


def test_seeds_wrap_within_int64_and_no_seed_stays_none() -> None:
    wrapped = fan_out(base_payload(seed=INT64_MAX), ("a",), 3)
    assert [c.payload.sampling.seed for c in wrapped] == [INT64_MAX, -(2**63), -(2**63) + 1]
    assert {c.payload.sampling.seed for c in fan_out(base_payload(), ("a",), 3)} == {None}


def test_a_chat_fans_out_over_its_messages() -> None:
    candidates = fan_out(base_payload(prompt=None), None, 2)
    assert [(c.payload.prompt, c.payload.messages) for c in candidates] == [(None, (("user", "hi"),))] * 2


def test_best_of_keeps_the_n_highest_cumulative_logprobs_best_first_per_prompt() -> None:
    candidates = fan_out(base_payload(), ("a", "b"), 3)
    finals = [
        final("a0", (-1.0, -1.0)),
        final("a1", (-0.1, -0.2)),
        final("a2", (-0.5,)),
        final("b0", (-3.0,)),
        final("b1", (-2.0,)),
        final("b2", (-0.1, -5.0)),
    ]
    assert cumulative_logprob(finals[0]) == -2.0
    picked = chosen(candidates, finals, n=2)
    assert [(index, chunk.text) for index, chunk in picked] == [(0, "a1"), (1, "a2"), (2, "b1"), (3, "b0")]


def test_n_choices_keep_their_order_without_ranking() -> None:
    candidates = fan_out(base_payload(), ("a", "b"), 2)
    finals = [final("a0", (-5.0,)), final("a1", (-0.1,)), final("b0"), final("b1")]
    assert [(index, chunk.text) for index, chunk in chosen(candidates, finals, n=2)] == [
        (0, "a0"),
        (1, "a1"),
        (2, "b0"),
        (3, "b1"),
    ]


def test_usage_counts_each_prompt_once_and_every_generated_token() -> None:
    candidates = fan_out(base_payload(), ("a", "bb"), 3)
    finals = [final("a", prompt_tokens=1, tokens=4)] * 3 + [final("b", prompt_tokens=2, tokens=5)] * 3
    assert usage_of(candidates, finals) == (1 + 2, 3 * 4 + 3 * 5)


def sampling_of(
    model: type[CompletionRequest] | type[ChatCompletionRequest], body: dict[str, Any]
) -> WireSampling:
    return wire_sampling(parse_body(model, json.dumps(body).encode()), max_tokens=16)


def test_the_sampling_parameters_reach_the_wire() -> None:
    sampling = sampling_of(
        CompletionRequest,
        {
            "prompt": "p",
            "logprobs": 3,
            "presence_penalty": 0.5,
            "frequency_penalty": -1.5,
            "repetition_penalty": 1.2,
            "logit_bias": {"42": -100, "7": 2.5},
            "min_tokens": 16,
            "ignore_eos": True,
            "stop_token_ids": [2, 3],
            "seed": 5,
        },
    )
    assert sampling == WireSampling(
        max_tokens=16,
        temperature=1.0,
        seed=5,
        logprobs=3,
        presence_penalty=0.5,
        frequency_penalty=-1.5,
        repetition_penalty=1.2,
        logit_bias=((42, -100.0), (7, 2.5)),
        min_tokens=16,
        ignore_eos=True,
        stop_token_ids=(2, 3),
    )


def test_neutral_values_give_the_default_sampling() -> None:
    neutral = {
        "messages": [{"role": "user", "content": "hi"}],
        "logprobs": None,
        "top_logprobs": 0,
        "presence_penalty": None,
        "frequency_penalty": 0,
        "repetition_penalty": None,
        "logit_bias": {},
        "min_tokens": None,
        "stop_token_ids": None,
    }
    assert sampling_of(ChatCompletionRequest, neutral) == WireSampling(max_tokens=16, temperature=1.0)


def test_logprobs_are_asked_for_as_the_client_asks_or_to_rank_best_of() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert sampling_of(ChatCompletionRequest, {**chat, "logprobs": True}).logprobs == 0
    assert sampling_of(ChatCompletionRequest, {**chat, "logprobs": True, "top_logprobs": 20}).logprobs == 20
    assert sampling_of(ChatCompletionRequest, {**chat, "logprobs": False, "top_logprobs": 0}).logprobs is None
    assert sampling_of(CompletionRequest, {"prompt": "p", "best_of": 3}).logprobs == 0
    assert sampling_of(CompletionRequest, {"prompt": "p", "best_of": 3, "logprobs": 4}).logprobs == 4
    assert sampling_of(CompletionRequest, {"prompt": "p", "n": 2, "best_of": 2}).logprobs is None


def test_min_tokens_beyond_max_tokens_is_a_400_naming_it() -> None:
    with pytest.raises(OpenAIError) as refused:
        sampling_of(CompletionRequest, {"prompt": "p", "min_tokens": 17})
    assert (refused.value.status, refused.value.param) == (400, "min_tokens")


async def items(
    values: list[Any], delay_s: float = 0.0, fail: Exception | None = None
) -> AsyncGenerator[Any, None]:
    for value in values:
        await asyncio.sleep(delay_s)
        yield value
    if fail is not None:
        raise fail


async def test_merged_streams_give_every_item_with_its_position() -> None:
    slow, fast = items(["s1", "s2"], delay_s=0.02), items(["f1", "f2", "f3"])
    received = [pair async for pair in merged([slow, fast])]
    assert sorted(received) == [(0, "s1"), (0, "s2"), (1, "f1"), (1, "f2"), (1, "f3")]
    assert [value for position, value in received if position == 1] == ["f1", "f2", "f3"]
    assert received[0] == (1, "f1"), "the fast stream is not held up by the slow one"


async def test_a_failing_stream_ends_the_merge_and_closes_the_others() -> None:
    closed: list[str] = []

    async def endless() -> AsyncGenerator[str, None]:
        try:
            while True:
                await asyncio.sleep(0.01)
                yield "tick"
        finally:
            closed.append("endless")

    failure = OpenAIError(503, "gone")
    with pytest.raises(OpenAIError) as raised:
        async for _ in merged([endless(), items(["x"], delay_s=0.03, fail=failure)]):
            pass
    assert raised.value is failure
    assert closed == ["endless"]


async def test_indexed_gives_one_stream_at_position_zero() -> None:
    assert [pair async for pair in indexed(items(["a", "b"]))] == [(0, "a"), (0, "b")]


async def test_all_or_none_gives_every_result_or_the_first_failure_cancelling_the_rest() -> None:
    async def value(result: str, delay_s: float) -> str:
        await asyncio.sleep(delay_s)
        return result

    assert await all_or_none([value("a", 0.02), value("b", 0.0)]) == ["a", "b"]
    slow = asyncio.ensure_future(value("never", 5.0))

    async def failing() -> str:
        raise OpenAIError(429, "full")

    with pytest.raises(OpenAIError):
        await all_or_none([slow, failing()])
    assert slow.cancelled()
