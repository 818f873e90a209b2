"""The API end to end: real API and worker processes (echo engine) on a real Redis, driven over HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import openai
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gorgon.api.app import create_app
from gorgon.api.config import ApiSettings, hash_api_key
from gorgon.core.config import RedisSettings
from gorgon.core.redis.names import RedisNames
from gorgon.engine.echo import chat_prompt, continuation
from gorgon.engine.interface import ChatMessage
from gorgon.local.processes import LocalServices, free_port

pytestmark = pytest.mark.processes


PROMPT = "Write a short history of the internet:"


def sse_events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def backlog(services: LocalServices) -> int:
    client = redis.Redis.from_url(services.redis_url)
    try:
        return int(client.xlen(RedisNames(services.namespace).request_stream("echo")))
    finally:
        client.close()


def wait_for_empty_backlog(services: LocalServices, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while backlog(services) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backlog(services) == 0, "the cancelled request is still queued or running"


def test_completion_returns_the_engine_text_with_usage(api: str) -> None:
    reply = httpx.post(f"{api}/v1/completions", json={"prompt": PROMPT, "max_tokens": 9}, timeout=10)
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "echo"
    assert body["choices"][0]["text"] == continuation(PROMPT, 9)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": len(PROMPT),
        "completion_tokens": 9,
        "total_tokens": len(PROMPT) + 9,
    }


def test_streaming_completion_is_server_sent_events_ending_in_done(api: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 12, "stream": True, "use_speculative": False}
    with httpx.stream("POST", f"{api}/v1/completions", json=body, timeout=10) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["cache-control"] == "no-cache"
        assert reply.headers["x-accel-buffering"] == "no"
        events = sse_events(reply)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) == 12, "one chunk per token without speculation"
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == continuation(PROMPT, 12)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 11 + ["length"]


def test_speculative_requests_deliver_several_tokens_per_chunk_with_the_same_text(api: str) -> None:
    texts, counts = {}, {}
    for speculative in (True, False):
        body = {"prompt": PROMPT, "max_tokens": 12, "stream": True, "use_speculative": speculative}
        with httpx.stream("POST", f"{api}/v1/completions", json=body, timeout=10) as reply:
            chunks = [json.loads(event) for event in sse_events(reply)[:-1]]
        texts[speculative] = "".join(chunk["choices"][0]["text"] for chunk in chunks)
        counts[speculative] = len(chunks)
    assert texts[True] == texts[False] == continuation(PROMPT, 12)
    assert counts[True] < counts[False]


def test_stop_sequence_cuts_the_text(api: str) -> None:
    body = {"prompt": "abc", "max_tokens": 20, "stop": ["gh"]}
    reply = httpx.post(f"{api}/v1/completions", json=body, timeout=10).json()
    assert reply["choices"][0]["text"] == "def"
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_openai_client_works_unmodified_for_chat_streaming_and_not(api: str) -> None:
    client = openai.OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    expected = continuation(chat_prompt([ChatMessage(m["role"], m["content"]) for m in messages]), 10)
    whole = client.chat.completions.create(model="echo", messages=messages, max_tokens=10)
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and whole.usage.completion_tokens == 10
    stream = client.chat.completions.create(
        model="echo", messages=messages, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == expected
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    )
    completion = client.completions.create(model="echo", prompt="xy", max_tokens=4, stream=True)
    assert "".join(chunk.choices[0].text for chunk in completion) == "z ab"
    assert [model.id for model in client.models.list()] == ["echo"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("stream", [False, True])
def test_seed_curl_examples_work_verbatim(api: str, stream: bool) -> None:
    flag = "true" if stream else "false"
    data = (
        '{\n  "prompt": "Write a short history of the internet:",\n  "max_tokens": 100,\n'
        f'  "use_speculative": true,\n  "stream": {flag}\n}}'
    )
    command = ["curl", "-sS", "-X", "POST", f"{api}/v1/completions", "-H", "Content-Type: application/json"]
    output = subprocess.run(
        [*command, *(["-N"] if stream else []), "-d", data],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    if stream:
        events = [line.removeprefix("data: ") for line in output.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(event)["choices"][0]["text"] for event in events[:-1])
    else:
        text = json.loads(output)["choices"][0]["text"]
    assert text == continuation(PROMPT, 100)


@pytest.mark.parametrize(
    ("body", "status", "param_or_code"),
    [
        ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 100_000}, 400, "max_tokens"),
        ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": 5}, 400, "prompt"),
        ({"max_tokens": 5}, 400, "prompt"),
        ({"prompt": "hi", "n": 9}, 400, "n"),
        ({"prompt": "hi", "model": "no-such-model"}, 404, "model_not_found"),
        ({"prompt": "x" * 4000, "max_tokens": 500}, 400, "context_length_exceeded"),
        ({"prompt": "hi", "max_tokens": 4095}, 400, "context_length_exceeded"),
        ({"prompt": "hi", "presence_penalty": 2.5}, 400, "presence_penalty"),
        ({"prompt": "hi", "logit_bias": {"one": 5}}, 400, "logit_bias"),
        ({"prompt": "hi", "suffix": "!"}, 400, "suffix"),
        ({"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ],
)
def test_bad_requests_get_openai_style_errors(api: str, body: dict, status: int, param_or_code: str) -> None:
    reply = httpx.post(f"{api}/v1/completions", json=body, timeout=10)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert param_or_code in (str(error["param"]).split(".")[0], error["code"])
    assert error["message"]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("functions", [{"name": "f", "parameters": {}}]),
        ("function_call", "auto"),
    ],
)
def test_chat_parameters_gorgon_does_not_implement_are_refused_by_name(
    api: str, param: str, value: object
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, param: value}
    reply = httpx.post(f"{api}/v1/chat/completions", json=body, timeout=10)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert reply.json()["error"]["code"] == "unsupported_parameter"
    neutral = {"functions": [], "function_call": "none"}
    accepted = httpx.post(f"{api}/v1/chat/completions", json={**body, param: neutral[param]}, timeout=10)
    assert accepted.status_code == 200, accepted.text


def test_malformed_json_and_oversized_bodies_are_refused(api: str) -> None:
    broken = httpx.post(
        f"{api}/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    huge = httpx.post(f"{api}/v1/completions", json={"prompt": "x" * 2_000_000}, timeout=10)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    chat = httpx.post(f"{api}/v1/chat/completions", json={"messages": []}, timeout=10)
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_generation_paths_refuse_other_methods_in_openai_shape(api: str, path: str) -> None:
    reply = httpx.get(f"{api}{path}")
    assert reply.status_code == 405 and reply.json()["error"]["type"] == "invalid_request_error"


def test_health_ready_and_metrics(api: str) -> None:
    assert httpx.get(f"{api}/health").json() == {"status": "ok"}
    assert httpx.get(f"{api}/ready").json()["models"] == ["echo"]
    metrics = httpx.get(f"{api}/metrics").text
    assert "gorgon_api_requests_total" in metrics


def test_metrics_on_a_port_of_their_own_leave_the_api_port(services: LocalServices) -> None:
    metrics_port = free_port()
    api = services.start_api(metrics_port=str(metrics_port))
    assert httpx.post(f"{api}/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    on_api_port = httpx.get(f"{api}/metrics")
    assert on_api_port.status_code == 404
    assert on_api_port.json()["error"]["type"] == "invalid_request_error"
    apart = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    assert apart.status_code == 200
    assert 'gorgon_api_requests_total{endpoint="/v1/completions",status="200"}' in apart.text


def test_streaming_client_disconnect_cancels_the_job(api: str, services: LocalServices) -> None:
    body = {"prompt": "a", "max_tokens": 3000, "stream": True, "use_speculative": False}
    with httpx.stream("POST", f"{api}/v1/completions", json=body, timeout=10) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")
        assert backlog(services) == 1
    wait_for_empty_backlog(services, timeout_s=3)


def test_non_streaming_client_disconnect_cancels_the_job(api: str, services: LocalServices) -> None:
    body = {"prompt": "a", "max_tokens": 3000, "use_speculative": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{api}/v1/completions", json=body, timeout=httpx.Timeout(10, read=0.5))
    wait_for_empty_backlog(services, timeout_s=3)


def test_backpressure_deadline_keys_and_rate_limits(api: str, services: LocalServices) -> None:
    limited = services.start_api(max_backlog="1", request_timeout_s="1.5", retry_after_s="3")
    long_body = {"prompt": "a", "max_tokens": 3000, "stream": True, "use_speculative": False}
    with httpx.stream("POST", f"{limited}/v1/completions", json=long_body, timeout=10) as reply:
        lines = reply.iter_lines()
        next(lines)
        refused = httpx.post(f"{limited}/v1/completions", json={"prompt": "hi"}, timeout=10)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "3"
        assert refused.json()["error"]["code"] == "queue_full"
        tail = list(lines)
    assert any('"timeout"' in line for line in tail), "the stream ends with the deadline error"
    wait_for_empty_backlog(services, timeout_s=3)
    late = httpx.post(f"{limited}/v1/completions", json={"prompt": "a", "max_tokens": 3000}, timeout=10)
    assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"

    guarded = services.start_api(key_hashes=hash_api_key("sesame"), rate_limit_per_minute="2")
    body = {"prompt": "hi", "max_tokens": 2}
    assert httpx.post(f"{guarded}/v1/completions", json=body).status_code == 401
    wrong = httpx.post(f"{guarded}/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    good = {"Authorization": "Bearer sesame"}
    statuses = [
        httpx.post(f"{guarded}/v1/completions", json=body, headers=good).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


async def test_an_api_without_keys_warns_at_start(
    redis_url: str, redis_names: RedisNames, caplog: pytest.LogCaptureFixture
) -> None:
    redis_settings = RedisSettings(REDIS_URL=redis_url, GORGON_REDIS_NAMESPACE=redis_names.namespace)
    for settings, warned in ((ApiSettings(), True), (ApiSettings(key_hashes=hash_api_key("k")), False)):
        caplog.clear()
        app = create_app(settings, redis_settings)
        with caplog.at_level("WARNING", logger="gorgon.api.app"):
            async with app.router.lifespan_context(app):
                pass
        warnings = [r for r in caplog.records if r.levelname == "WARNING" and "no API keys" in r.message]
        assert bool(warnings) is warned


async def test_ready_keeps_the_redis_error_to_the_log(
    redis_url: str, redis_names: RedisNames, caplog: pytest.LogCaptureFixture
) -> None:
    redis_settings = RedisSettings(REDIS_URL=redis_url, GORGON_REDIS_NAMESPACE=redis_names.namespace)
    app = create_app(ApiSettings(key_hashes=hash_api_key("k")), redis_settings)
    detail = "Error 111 connecting to 10.9.8.7:6379. Connection refused."

    async def refused() -> None:
        raise RedisConnectionError(detail)

    async with app.router.lifespan_context(app):
        app.state.gorgon.redis.ping = refused
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            with caplog.at_level("WARNING", logger="gorgon.api.routes.health"):
                reply = await client.get("/ready")
    assert reply.status_code == 503
    assert reply.json()["error"] == {
        "message": "Redis is unreachable",
        "type": "server_error",
        "param": None,
        "code": "redis_unavailable",
    }
    assert detail in caplog.text
