"""What clients and benchmark tools use of OpenAI's API, through the official `openai` client against an API and
an echo worker on a real Redis: sampling parameters, logprobs (whole and streamed, text held back for a stop
sequence included), `n`, `best_of`, lists of prompts, usage in streams, /v1/models/{id}, and the 400s naming
what is out of range or not supported."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
import redis

from gorgon.core.redis.names import RedisNames
from gorgon.engine.echo import chat_prompt, continuation
from gorgon.engine.interface import ChatMessage
from gorgon.local.processes import LocalServices

pytestmark = pytest.mark.processes

PROMPT = "Once upon a time"
MESSAGES: list[Any] = [{"role": "user", "content": "Count with me."}]
CHAT_TEXT = chat_prompt([ChatMessage("user", "Count with me.")])
SLASHED_MODEL = "lmsys/vicuna-7b-v1.3"


@pytest.fixture(scope="module")
def client(api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0, timeout=20)


def sse_data(api: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON events of a streamed reply (without the closing [DONE])."""
    with httpx.stream("POST", f"{api}{path}", json=body, timeout=20) as reply:
        assert reply.status_code == 200, reply.read()
        events = [line.removeprefix("data: ") for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def backlog(services: LocalServices) -> int:
    client = redis.Redis.from_url(services.redis_url)
    try:
        return int(client.xlen(RedisNames(services.namespace).request_stream("echo")))
    finally:
        client.close()


def wait_for_empty_backlog(services: LocalServices, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while backlog(services) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backlog(services) == 0, "requests of the reply are still queued or running"


# --- sampling parameters -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_sampling_parameters_are_taken_whole_and_streamed(client: openai.OpenAI, stream: bool) -> None:
    """Every parameter reaches the worker and is taken there (the echo engine checks the token ids against its
    byte vocabulary; its next character is fixed, so the text stays the same). The values on the wire are
    test_choices.py's concern."""
    vllm_extras = {"repetition_penalty": 1.3, "min_tokens": 3, "ignore_eos": True, "stop_token_ids": [10, 0]}
    common: dict[str, Any] = {
        "model": "echo",
        "max_tokens": 6,
        "presence_penalty": 0.5,
        "frequency_penalty": -2.0,
        "logit_bias": {"120": -100, "97": 100},
        "seed": 11,
        "extra_body": vllm_extras,
    }
    completion = client.completions.create(prompt=PROMPT, stream=stream, **common)
    chat = client.chat.completions.create(messages=MESSAGES, stream=stream, **common)
    if stream:
        assert "".join(chunk.choices[0].text for chunk in completion) == continuation(PROMPT, 6)
        assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices) == continuation(
            CHAT_TEXT, 6
        )
    else:
        assert completion.choices[0].text == continuation(PROMPT, 6)
        assert chat.choices[0].message.content == continuation(CHAT_TEXT, 6)


# --- logprobs --------------------------------------------------------------------------------------------------


def check_completion_logprobs(logprobs: Any, text: str, asked: int, first_offset: int = 0) -> None:
    """Echo tokens are characters: one entry per character, offsets counting them, the chosen token among at
    most `asked` + 1 top entries."""
    assert logprobs.tokens == list(text)
    assert len(logprobs.token_logprobs) == len(text)
    assert all(logprob <= 0.0 for logprob in logprobs.token_logprobs)
    assert logprobs.text_offset == list(range(first_offset, first_offset + len(text)))
    for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True):
        assert token in top and 1 <= len(top) <= asked + 1


def test_completion_logprobs_whole(client: openai.OpenAI) -> None:
    for asked in (0, 2, 5):
        reply = client.completions.create(model="echo", prompt=PROMPT, max_tokens=7, logprobs=asked)
        choice = reply.choices[0]
        check_completion_logprobs(choice.logprobs, choice.text, asked)
        assert reply.usage is not None and reply.usage.completion_tokens == 7
    plain = client.completions.create(model="echo", prompt=PROMPT, max_tokens=3)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_streamed_are_each_chunks_tokens(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(model="echo", prompt=PROMPT, max_tokens=10, logprobs=3, stream=True)
    )
    assert len(chunks) > 1
    sent = 0
    for chunk in chunks:
        check_completion_logprobs(chunk.choices[0].logprobs, chunk.choices[0].text, 3, first_offset=sent)
        sent += len(chunk.choices[0].text)
    assert "".join(chunk.choices[0].text for chunk in chunks) == continuation(PROMPT, 10)


def check_chat_logprobs(content: Any, text: str, asked: int) -> None:
    assert [entry.token for entry in content] == list(text)
    for entry in content:
        assert entry.logprob <= 0.0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == asked
        assert all(top.bytes == list(top.token.encode()) for top in entry.top_logprobs)
        if asked:
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob


@pytest.mark.parametrize("top_logprobs", [None, 0, 4, 20])
def test_chat_logprobs_whole_and_streamed(client: openai.OpenAI, top_logprobs: int | None) -> None:
    common: dict[str, Any] = {"model": "echo", "messages": MESSAGES, "max_tokens": 8, "logprobs": True}
    if top_logprobs is not None:
        common["top_logprobs"] = top_logprobs
    whole = client.chat.completions.create(**common).choices[0]
    assert whole.logprobs is not None and whole.logprobs.content is not None
    check_chat_logprobs(whole.logprobs.content, continuation(CHAT_TEXT, 8), top_logprobs or 0)
    chunks = list(client.chat.completions.create(stream=True, **common))
    content = [
        entry
        for chunk in chunks
        if chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or []
    ]
    check_chat_logprobs(content, continuation(CHAT_TEXT, 8), top_logprobs or 0)
    for chunk in chunks:
        delta, logprobs = chunk.choices[0].delta, chunk.choices[0].logprobs
        assert logprobs is not None and [entry.token for entry in logprobs.content or []] == list(
            delta.content or ""
        )


def test_logprobs_of_text_held_back_for_a_stop_sequence_still_arrive(api: str) -> None:
    """ "abc" continues "defgh..."; with stop "gh" the "g" is held back until "h" decides it. Its token and the
    stop's still get their logprobs, in an event of empty text (as vLLM sends them), so the logprobs cover every
    generated token while the text stops before the stop sequence."""
    body = {"prompt": "abc", "max_tokens": 20, "stop": "gh", "logprobs": 1, "use_speculative": False}
    chunks = sse_data(api, "/v1/completions", {**body, "stream": True})
    choices = [chunk["choices"][0] for chunk in chunks]
    assert "".join(choice["text"] for choice in choices) == "def"
    assert [token for choice in choices for token in choice["logprobs"]["tokens"]] == list("defgh")
    assert any(choice["text"] == "" and choice["logprobs"]["tokens"] == ["g"] for choice in choices)
    assert choices[-1]["finish_reason"] == "stop"
    whole = httpx.post(f"{api}/v1/completions", json=body, timeout=20).json()["choices"][0]
    assert whole["text"] == "def" and whole["logprobs"]["tokens"] == list("defgh")


# --- n, best_of, lists of prompts --------------------------------------------------------------------------------


def test_n_completions_whole_index_every_choice_and_count_the_prompt_once(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="echo", prompt=PROMPT, max_tokens=5, n=3, seed=4)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert {choice.text for choice in reply.choices} == {continuation(PROMPT, 5)}
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(PROMPT), 3 * 5)


def test_n_chat_streamed_indexes_every_chunk_and_sums_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="echo",
            messages=MESSAGES,
            max_tokens=9,
            n=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"use_speculative": False},
        )
    )
    *deltas, last = chunks
    by_index: dict[int, list[Any]] = {}
    for chunk in deltas:
        (choice,) = chunk.choices
        by_index.setdefault(choice.index, []).append(choice)
    assert sorted(by_index) == [0, 1, 2, 3]
    for choices in by_index.values():
        assert choices[0].delta.role == "assistant"
        assert "".join(choice.delta.content or "" for choice in choices) == continuation(CHAT_TEXT, 9)
        assert [choice.finish_reason for choice in choices][-1] == "length"
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(CHAT_TEXT), 4 * 9)


def test_best_of_returns_n_choices_and_bills_every_candidate(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="echo", prompt=PROMPT, max_tokens=4, n=2, best_of=5)
    assert [choice.index for choice in reply.choices] == [0, 1]
    assert all(choice.logprobs is None for choice in reply.choices), "logprobs ranked them, unasked"
    assert reply.usage is not None and reply.usage.completion_tokens == 5 * 4
    asked = client.completions.create(model="echo", prompt=PROMPT, max_tokens=4, best_of=3, logprobs=1)
    (choice,) = asked.choices
    check_completion_logprobs(choice.logprobs, continuation(PROMPT, 4), 1)


@pytest.mark.parametrize("stream", [False, True])
def test_a_list_of_prompts_gives_n_choices_each_indexed_by_prompt(api: str, stream: bool) -> None:
    prompts = ["ab", "xyz", "Hello"]
    body = {"prompt": prompts, "max_tokens": 4, "n": 2, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
        chunks = sse_data(api, "/v1/completions", body)
        texts: dict[int, str] = {}
        for chunk in chunks[:-1]:
            (choice,) = chunk["choices"]
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        usage = chunks[-1]["usage"]
    else:
        reply = httpx.post(f"{api}/v1/completions", json=body, timeout=20).json()
        texts = {choice["index"]: choice["text"] for choice in reply["choices"]}
        assert [choice["index"] for choice in reply["choices"]] == list(range(6))
        usage = reply["usage"]
    assert texts == {index: continuation(prompts[index // 2], 4) for index in range(6)}
    assert usage == {"prompt_tokens": 2 + 3 + 5, "completion_tokens": 6 * 4, "total_tokens": 10 + 24}


def test_every_request_of_a_streamed_reply_is_cancelled_when_its_client_leaves(
    api: str, services: LocalServices
) -> None:
    body = {"prompt": ["a", "b"], "max_tokens": 3000, "n": 2, "stream": True, "use_speculative": False}
    with httpx.stream("POST", f"{api}/v1/completions", json=body, timeout=10) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")
        assert backlog(services) == 4
    wait_for_empty_backlog(services)


def test_every_request_of_a_whole_reply_is_cancelled_when_its_client_leaves(
    api: str, services: LocalServices
) -> None:
    body = {"messages": MESSAGES, "max_tokens": 3000, "n": 3, "use_speculative": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{api}/v1/chat/completions", json=body, timeout=httpx.Timeout(10, read=0.5))
    wait_for_empty_backlog(services)


def test_a_reply_the_queue_cannot_take_whole_is_refused_and_leaves_nothing_queued(
    services: LocalServices,
) -> None:
    small = services.start_api(max_backlog="2", retry_after_s="2")
    body = {"prompt": "a", "max_tokens": 3000, "n": 3, "use_speculative": False}
    refused = httpx.post(f"{small}/v1/completions", json=body, timeout=10)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    wait_for_empty_backlog(services)


# --- usage in streams, models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_with_include_usage_every_chunk_says_usage_null_and_a_last_one_has_the_totals(
    api: str, path: str
) -> None:
    body: dict[str, Any] = {"max_tokens": 5, "stream": True, "use_speculative": False}
    body |= {"prompt": PROMPT} if path == "/v1/completions" else {"messages": MESSAGES}
    *deltas, last = sse_data(api, path, {**body, "stream_options": {"include_usage": True}})
    assert deltas and all("usage" in chunk and chunk["usage"] is None for chunk in deltas)
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5
    assert all("usage" not in chunk for chunk in sse_data(api, path, body))


def test_a_model_is_retrieved_by_its_id_slashes_included(
    client: openai.OpenAI, services: LocalServices
) -> None:
    echo = client.models.retrieve("echo")
    assert (echo.id, echo.object, echo.owned_by) == ("echo", "model", "gorgon")
    with_configured = openai.OpenAI(
        base_url=f"{services.start_api(served_models=f'{SLASHED_MODEL}:4096')}/v1",
        api_key="unused",
        max_retries=0,
    )
    assert with_configured.models.retrieve(SLASHED_MODEL).id == SLASHED_MODEL
    assert SLASHED_MODEL in [model.id for model in with_configured.models.list()]
    with pytest.raises(openai.NotFoundError) as missing:
        with_configured.models.retrieve("lmsys/no-such-model")
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")


# --- refusals ----------------------------------------------------------------------------------------------------


COMPLETION_400S: list[tuple[dict[str, Any], str]] = [
    ({"logprobs": 6}, "logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"logit_bias": {"a token": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"n": 9}, "n"),
    ({"best_of": 9}, "best_of"),
    ({"n": 3, "best_of": 2}, "best_of"),
    ({"best_of": 2, "stream": True}, "best_of"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": [[1, 2], [3]]}, "prompt"),
    ({"prompt": ["fine", ""]}, "prompt"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
    ({"extra_body": {"min_tokens": -1}}, "min_tokens"),
    ({"max_tokens": 4, "extra_body": {"min_tokens": 5}}, "min_tokens"),
    ({"extra_body": {"stop_token_ids": [-1]}}, "stop_token_ids"),
    ({"extra_body": {"ignore_eos": "maybe"}}, "ignore_eos"),
    ({"echo": True}, "echo"),
    ({"suffix": "!"}, "suffix"),
]
CHAT_400S: list[tuple[dict[str, Any], str]] = [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"extra_body": {"logprobs": 2}}, "logprobs"),
    ({"n": 0}, "n"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"extra_body": {"functions": [{"name": "f"}]}}, "functions"),
]


@pytest.mark.parametrize(("params", "param"), COMPLETION_400S)
def test_completion_parameters_out_of_range_or_unsupported_are_400s_naming_them(
    client: openai.OpenAI, params: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"model": "echo", "prompt": PROMPT, "max_tokens": 8, **params}
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(**request)
    assert str(refused.value.param).split(".")[0] == param
    assert refused.value.code in {"invalid_value", "unsupported_parameter"}


@pytest.mark.parametrize(("params", "param"), CHAT_400S)
def test_chat_parameters_out_of_range_or_unsupported_are_400s_naming_them(
    client: openai.OpenAI, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="echo", messages=MESSAGES, max_tokens=8, **params)
    assert str(refused.value.param).split(".")[0] == param
