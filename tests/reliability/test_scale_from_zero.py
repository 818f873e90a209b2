"""Scale from zero through the API: with no worker up, /ready answers 200 and requests for a configured model are
checked (against its configured context length), queued and held — a streaming client gets its response head at
once and keep-alive comments while it waits — until a worker starts; then every waiting request completes."""

from __future__ import annotations

import logging
import subprocess
import threading
import time

import httpx
import pytest
from reliability_harness import StreamOutcome, read_sse_line, wait_for

from gorgon.engine.echo import continuation
from gorgon.local.processes import LocalServices, registered_workers
from gorgon_testing import services_in_fresh_namespace

pytestmark = pytest.mark.processes

log = logging.getLogger(__name__)

CONTEXT_LENGTH = 64
KEEPALIVE_S = 0.3
QUEUED_FOR_S = 1.5
PROMPT = "abc"
MAX_TOKENS = 20


def read_stream(api: str, outcome: StreamOutcome, marks: dict[str, float], comments: list[float]) -> None:
    """One streaming completion; when its head and each keep-alive comment arrived."""
    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True, "use_speculative": False}
    started = time.monotonic()
    with httpx.stream("POST", f"{api}/v1/completions", json=body, timeout=60) as reply:
        marks["head"] = time.monotonic() - started
        outcome.status = reply.status_code
        for line in reply.iter_lines():
            if line == ": keep-alive":
                comments.append(time.monotonic() - started)
            read_sse_line(outcome, line)


def test_requests_wait_for_the_first_worker_and_streams_are_kept_alive(redis_url: str) -> None:
    settings = {
        "GORGON_API_SERVED_MODELS": f"echo:{CONTEXT_LENGTH}",
        "GORGON_API_SSE_KEEPALIVE_S": str(KEEPALIVE_S),
    }
    with services_in_fresh_namespace(redis_url, settings) as services:
        api = services.start_api()
        ready = httpx.get(f"{api}/ready", timeout=5)
        assert ready.status_code == 200 and ready.json()["models"] == ["echo"]
        too_long = httpx.post(f"{api}/v1/completions", json={"prompt": PROMPT, "max_tokens": CONTEXT_LENGTH})
        assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"

        streamed, marks, comments = StreamOutcome(PROMPT, MAX_TOKENS), {}, []
        whole: list[httpx.Response] = []
        waiting = [
            threading.Thread(target=read_stream, args=(api, streamed, marks, comments)),
            threading.Thread(target=lambda: whole.append(post_whole(api))),
        ]
        for thread in waiting:
            thread.start()
        time.sleep(QUEUED_FOR_S)
        worker = start_worker(services)
        for thread in waiting:
            thread.join(60)

        gaps = [later - earlier for earlier, later in zip([marks["head"], *comments], comments, strict=False)]
        log.info(
            "no worker for %.1f s: head after %.3f s, %d keep-alive comments (largest gap %.2f s), then %s / %d",
            QUEUED_FOR_S,
            marks["head"],
            len(comments),
            max(gaps, default=0.0),
            "completed" if streamed.completed else streamed.error,
            whole[0].status_code,
        )
        assert marks["head"] < 1.0, "the response head waited for the first token"
        assert len(comments) >= 3 and max(gaps) < KEEPALIVE_S + 0.5
        assert streamed.problem() is None and streamed.completed
        assert whole[0].status_code == 200
        assert whole[0].json()["choices"][0]["text"] == continuation(PROMPT, MAX_TOKENS)
        assert worker.poll() is None


def post_whole(api: str) -> httpx.Response:
    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "use_speculative": False}
    return httpx.post(f"{api}/v1/completions", json=body, timeout=60)


def start_worker(services: LocalServices) -> subprocess.Popen[bytes]:
    worker = services.start_worker("echo", 0.0, read_block_ms="20")
    assert wait_for(lambda: registered_workers(services.redis_url, services.namespace) == 1, 30)
    return worker
