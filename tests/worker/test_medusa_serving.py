"""The default engine behind the API: the real SmolLM2 model with its Medusa heads in a worker process."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from gorgon_testing import services_in_fresh_namespace

pytestmark = pytest.mark.slow

MODEL_LOAD_TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def medusa_api(redis_url: str) -> Iterator[str]:
    with services_in_fresh_namespace(redis_url, grace_s=20) as services:
        services.start_worker("medusa", max_batch_size="4")
        yield services.start_api(ready_timeout_s=MODEL_LOAD_TIMEOUT_S)


def test_greedy_text_is_the_same_with_and_without_speculation(medusa_api: str) -> None:
    texts = {}
    for speculative in (True, False):
        body = {
            "prompt": "The capital of France is",
            "max_tokens": 24,
            "temperature": 0,
            "use_speculative": speculative,
        }
        reply = httpx.post(f"{medusa_api}/v1/completions", json=body, timeout=300)
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        texts[speculative] = choice["text"]
        assert choice["finish_reason"] in {"length", "stop"}
    assert texts[True] == texts[False]
    assert texts[True].strip()


def test_streamed_chat_matches_the_whole_reply(medusa_api: str) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    body = {"messages": messages, "max_tokens": 20, "temperature": 0}
    whole = httpx.post(f"{medusa_api}/v1/chat/completions", json=body, timeout=300).json()
    pieces = []
    with httpx.stream(
        "POST", f"{medusa_api}/v1/chat/completions", json={**body, "stream": True}, timeout=300
    ) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                pieces.append(chunk["choices"][0]["delta"].get("content") or "")
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert whole["usage"]["completion_tokens"] > 0
