"""After real requests through the API and an echo worker, /metrics of both moves as it should (parsed with
prometheus-client's own parser, compared before and after: the registry is shared by the whole test run)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from observability_platform import InProcessPlatform
from prometheus_client.parser import text_string_to_metric_families

from gorgon.engine.echo import SPECULATIVE_TOKENS_PER_STEP

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
PROMPT = "hello"
STREAM_TOKENS = 3 * SPECULATIVE_TOKENS_PER_STEP  # three chunks of three tokens
WHOLE_TOKENS = 2 * SPECULATIVE_TOKENS_PER_STEP


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    reply = await client.get(url)
    assert reply.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def snapshot(platform: InProcessPlatform) -> tuple[Samples, Samples]:
    async with httpx.AsyncClient() as plain:
        worker = await scrape(plain, platform.worker_metrics_url)
    return await scrape(platform.api, "/metrics"), worker


async def traffic(api: httpx.AsyncClient) -> None:
    """Two whole completions, one streamed completion, one chat, one rejected request."""
    for _ in range(2):
        reply = await api.post(COMPLETIONS, json={"prompt": PROMPT, "max_tokens": WHOLE_TOKENS})
        assert reply.status_code == 200, reply.text
    body = {"prompt": PROMPT, "max_tokens": STREAM_TOKENS, "stream": True}
    async with api.stream("POST", COMPLETIONS, json=body) as stream:
        events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
    assert stream.status_code == 200 and events[-1] == "data: [DONE]"
    chat = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": WHOLE_TOKENS}
    assert (await api.post(CHAT, json=chat)).status_code == 200
    rejected = await api.post(COMPLETIONS, json={"prompt": PROMPT, "max_tokens": 10**9})
    assert rejected.status_code == 400
    assert orjson.loads(rejected.content)["error"]["code"] == "invalid_value"


async def test_api_counters_and_histograms_follow_the_requests(platform: InProcessPlatform) -> None:
    before, _ = await snapshot(platform)
    await traffic(platform.api)
    after, _ = await snapshot(platform)

    assert moved(before, after, "gorgon_api_requests_total", endpoint=COMPLETIONS, status="200") == 3
    assert moved(before, after, "gorgon_api_requests_total", endpoint=CHAT, status="200") == 1
    assert moved(before, after, "gorgon_api_requests_total", endpoint=COMPLETIONS, status="400") == 1
    assert moved(before, after, "gorgon_api_rejected_requests_total", reason="invalid_value") == 1
    assert moved(before, after, "gorgon_api_request_seconds_count", endpoint=COMPLETIONS) == 4
    assert moved(before, after, "gorgon_api_request_seconds_sum", endpoint=COMPLETIONS) > 0
    # Only the streamed request has a first token the API sees; its later chunks carry 2 × 3 tokens.
    assert moved(before, after, "gorgon_api_time_to_first_token_seconds_count", endpoint=COMPLETIONS) == 1
    ttft_sum = moved(before, after, "gorgon_api_time_to_first_token_seconds_sum", endpoint=COMPLETIONS)
    latency_sum = moved(before, after, "gorgon_api_request_seconds_sum", endpoint=COMPLETIONS)
    assert 0 < ttft_sum < latency_sum
    later_tokens = STREAM_TOKENS - SPECULATIVE_TOKENS_PER_STEP
    assert moved(before, after, "gorgon_api_inter_token_latency_seconds_count", endpoint=COMPLETIONS) == (
        later_tokens
    )
    assert after[("gorgon_api_requests_in_flight", ())] == 0
    assert after[("gorgon_api_streams_in_flight", ())] == 0


async def test_probes_and_scrapes_are_not_counted_as_requests(platform: InProcessPlatform) -> None:
    before, _ = await snapshot(platform)
    assert (await platform.api.get("/health")).status_code == 200
    after, _ = await snapshot(platform)
    for endpoint in ("/health", "/metrics"):
        assert moved(before, after, "gorgon_api_requests_total", endpoint=endpoint, status="200") == 0


async def test_unknown_paths_share_one_endpoint_label(platform: InProcessPlatform) -> None:
    before, _ = await snapshot(platform)
    for path in ("/v1/nothing-here", "/v2/also-missing"):
        assert (await platform.api.get(path)).status_code == 404
    after, _ = await snapshot(platform)
    assert moved(before, after, "gorgon_api_requests_total", endpoint="other", status="404") == 2
    assert not any(labels and ("endpoint", "/v1/nothing-here") in labels for _, labels in after)


async def test_worker_counts_tokens_steps_speculation_and_queue_wait(platform: InProcessPlatform) -> None:
    _, before = await snapshot(platform)
    await traffic(platform.api)
    _, after = await snapshot(platform)

    generated = 2 * WHOLE_TOKENS + STREAM_TOKENS + WHOLE_TOKENS
    assert moved(before, after, "gorgon_worker_generated_tokens_total") == generated
    chat_prompt_bytes = len(f"user: {PROMPT}\nassistant:")
    prompt_tokens = 3 * len(PROMPT) + chat_prompt_bytes  # the echo engine's tokens are bytes
    assert moved(before, after, "gorgon_worker_prompt_tokens_total") == prompt_tokens
    assert moved(before, after, "gorgon_worker_requests_finished_total", reason="length") == 4
    assert moved(before, after, "gorgon_worker_queue_wait_seconds_count") == 4
    # Every echo step yields 3 tokens: 1 base token + 2 accepted drafts.
    row_steps = generated // SPECULATIVE_TOKENS_PER_STEP
    assert moved(before, after, "gorgon_worker_speculative_steps_total") == row_steps
    drafted = moved(before, after, "gorgon_worker_speculative_draft_tokens_total")
    accepted = moved(before, after, "gorgon_worker_speculative_accepted_tokens_total")
    assert drafted == accepted == row_steps * (SPECULATIVE_TOKENS_PER_STEP - 1)
    steps = moved(before, after, "gorgon_worker_step_seconds_count")
    assert steps >= row_steps / 4  # at most four requests share a step here
    assert moved(before, after, "gorgon_worker_step_batch_size_count") == steps
    assert moved(before, after, "gorgon_worker_step_batch_size_sum") == row_steps
    assert await worker_gauge_settles(platform, "gorgon_worker_batch_size", 0.0)


async def worker_gauge_settles(platform: InProcessPlatform, name: str, value: float) -> bool:
    """The worker sets its gauges once per loop turn: give it a few turns to catch up with the replies."""
    for _ in range(100):
        _, samples = await snapshot(platform)
        if samples[(name, ())] == value:
            return True
        await asyncio.sleep(0.01)
    return False
