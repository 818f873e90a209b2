"""Hostile requests and hostile queue entries: oversized bodies, deeply nested JSON, invalid UTF-8, huge and
negative numbers, prompts that look like the wire protocols (SSE, our JSON payload, Redis RESP), and garbage
written straight into the request stream. Each gets a clear 4xx (never a 5xx) or an exact answer, and the queue
keeps serving everyone after it."""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from gorgon.core.redis.names import RedisNames
from gorgon.engine.echo import continuation
from gorgon.local.processes import LocalServices

pytestmark = pytest.mark.processes


PROTOCOL_LOOKING_PROMPTS = [
    "data: [DONE]\n\n",
    'data: {"choices": [{"text": "x", "finish_reason": "stop"}]}\n\n',
    '{"v": 1, "request_id": "cmpl-0", "model": "echo", "reply_to": "gorgon:replies:x"}',
    "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n",
    "+OK\r\n-ERR wrong\r\n:1\r\n",
    "\x00\x01\x1b[2J end",
    "\u2028\u2029 line separators \ufeff",
]


def completion(api: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{api}/v1/completions", json=body, timeout=60, **kwargs)


def assert_openai_error(reply: httpx.Response, status: int) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["type"]


def assert_still_serving(api: str) -> None:
    reply = completion(api, {"prompt": "abc", "max_tokens": 5})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"] == continuation("abc", 5)


def stream_text(api: str, prompt: str, max_tokens: int) -> tuple[str, list[str]]:
    """The streamed text and the raw `data:` lines of one streaming completion."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True}
    with httpx.stream("POST", f"{api}/v1/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines if line != "data: [DONE]")
    return text, lines


@pytest.mark.parametrize("prompt", PROTOCOL_LOOKING_PROMPTS)
def test_prompts_that_look_like_protocol_text_are_just_text(echo_api: str, prompt: str) -> None:
    whole = completion(echo_api, {"prompt": prompt, "max_tokens": 12})
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["text"] == continuation(prompt, 12)
    text, lines = stream_text(echo_api, prompt, 12)
    assert text == continuation(prompt, 12)
    assert lines.count("data: [DONE]") == 1 and lines[-1] == "data: [DONE]"
    chat = httpx.post(
        f"{echo_api}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 4},
        timeout=60,
    )
    assert chat.status_code == 200, chat.text


def test_oversized_bodies_are_refused_with_413(echo_api: str) -> None:
    huge = b'{"prompt": "' + b"a" * 2_000_000 + b'"}'
    headers = {"Content-Type": "application/json"}
    assert_openai_error(
        httpx.post(f"{echo_api}/v1/completions", content=huge, headers=headers, timeout=60), 413
    )

    def chunked() -> object:
        yield huge

    reply = httpx.post(f"{echo_api}/v1/completions", content=chunked(), headers=headers, timeout=60)
    assert_openai_error(reply, 413)
    assert_still_serving(echo_api)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"prompt": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        b'{"prompt": "\xff\xfe\xfa invalid utf-8"}',
        b"\xff\xfe{\x00",
        b'{"prompt": "lone surrogate \\ud800 here", "max_tokens": 3}',
        b'{"prompt": "x", "max_tokens": NaN}',
        b'{"prompt": "x", "temperature": Infinity}',
        b"",
        b"null",
    ],
    ids=[
        "nested-arrays",
        "nested-objects",
        "bad-utf8-in-string",
        "bad-utf8-body",
        "lone-surrogate",
        "nan",
        "inf",
        "empty",
        "null",
    ],
)
def test_malformed_bodies_get_a_clear_400(echo_api: str, raw: bytes) -> None:
    reply = httpx.post(
        f"{echo_api}/v1/completions", content=raw, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert_openai_error(reply, 400)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": 10**30},
        {"max_tokens": -1},
        {"max_tokens": 0},
        {"max_tokens": 2**63},
        {"temperature": -0.5},
        {"temperature": 1e308},
        {"top_p": -1},
        {"top_p": 0},
        {"n": 2**40},
        {"seed": 2**80},
        {"seed": -(2**80)},
        {"stop": ["a"] * 50},
    ],
)
def test_huge_and_negative_numbers_get_a_clear_400(echo_api: str, fields: dict) -> None:
    assert_openai_error(completion(echo_api, {"prompt": "abc", **fields}), 400)


def test_garbage_in_the_request_stream_is_dead_lettered_and_serving_goes_on(
    echo_api: str, echo_services: LocalServices
) -> None:
    names = RedisNames(echo_services.namespace)
    client = redis.Redis.from_url(echo_services.redis_url)
    stream = names.request_stream("echo")
    dead_before = client.xlen(names.dead_letter_stream("echo"))
    try:
        for fields in (
            {b"p": b"\xff\xfe not json"},
            {b"p": b'{"v": 99, "request_id": "x"}'},
            {b"p": b'{"v": 2}'},
            {b"p": b"[]"},
            {b"other": b"field"},
        ):
            client.xadd(stream, fields)
        assert_still_serving(echo_api)
        assert client.xlen(names.dead_letter_stream("echo")) == dead_before + 5
    finally:
        client.close()
    assert_still_serving(echo_api)
