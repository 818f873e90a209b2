"""After real requests through the API and an echo worker, /metrics of both moves as it should (parsed with
prometheus-client's own parser, compared before and after: the registry is shared by the whole test run); the
per-request series carry the served model's `model_name`, and with the vLLM names on, vLLM's series follow."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from observability_platform import InProcessPlatform, running_platform
from prometheus_client.parser import text_string_to_metric_families

from gorgon.core.redis.names import RedisNames
from gorgon.engine.echo import ECHO_MODEL_NAME, SPECULATIVE_TOKENS_PER_STEP

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
PROMPT = "hello"
STREAM_TOKENS = 3 * SPECULATIVE_TOKENS_PER_STEP  # three chunks of three tokens
WHOLE_TOKENS = 2 * SPECULATIVE_TOKENS_PER_STEP
MODEL = ECHO_MODEL_NAME


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
    served = {"endpoint": COMPLETIONS, "model_name": MODEL}
    assert moved(before, after, "gorgon_api_request_seconds_count", **served) == 4
    assert moved(before, after, "gorgon_api_request_seconds_sum", **served) > 0
    # Only the streamed request has a first token the API sees; its later chunks carry 2 × 3 tokens.
    assert moved(before, after, "gorgon_api_time_to_first_token_seconds_count", **served) == 1
    ttft_sum = moved(before, after, "gorgon_api_time_to_first_token_seconds_sum", **served)
    latency_sum = moved(before, after, "gorgon_api_request_seconds_sum", **served)
    assert 0 < ttft_sum < latency_sum
    later_tokens = STREAM_TOKENS - SPECULATIVE_TOKENS_PER_STEP
    assert moved(before, after, "gorgon_api_inter_token_latency_seconds_count", **served) == later_tokens
    assert not any(name.startswith("vllm:") for name, _ in after)
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
    assert moved(before, after, "gorgon_worker_generated_tokens_total", model_name=MODEL) == generated
    chat_prompt_bytes = len(f"user: {PROMPT}\nassistant:")
    prompt_tokens = 3 * len(PROMPT) + chat_prompt_bytes  # the echo engine's tokens are bytes
    assert moved(before, after, "gorgon_worker_prompt_tokens_total", model_name=MODEL) == prompt_tokens
    finished = moved(
        before, after, "gorgon_worker_requests_finished_total", model_name=MODEL, reason="length"
    )
    assert finished == 4
    assert moved(before, after, "gorgon_worker_queue_wait_seconds_count", model_name=MODEL) == 4
    # Every echo step yields 3 tokens: 1 base token + 2 accepted drafts.
    row_steps = generated // SPECULATIVE_TOKENS_PER_STEP
    assert moved(before, after, "gorgon_worker_speculative_steps_total", model_name=MODEL) == row_steps
    drafted = moved(before, after, "gorgon_worker_speculative_draft_tokens_total", model_name=MODEL)
    accepted = moved(before, after, "gorgon_worker_speculative_accepted_tokens_total", model_name=MODEL)
    assert drafted == accepted == row_steps * (SPECULATIVE_TOKENS_PER_STEP - 1)
    steps = moved(before, after, "gorgon_worker_step_seconds_count", model_name=MODEL)
    assert steps >= row_steps / 4  # at most four requests share a step here
    assert moved(before, after, "gorgon_worker_step_batch_size_count", model_name=MODEL) == steps
    assert moved(before, after, "gorgon_worker_step_batch_size_sum", model_name=MODEL) == row_steps
    assert await worker_gauge_settles(platform, "gorgon_worker_batch_size", 0.0)
    worker_series = [labels for name, labels in after if name.startswith("gorgon_worker_")]
    assert worker_series and all(dict(labels).get("model_name") == MODEL for labels in worker_series)


async def worker_gauge_settles(platform: InProcessPlatform, name: str, value: float) -> bool:
    """The worker sets its gauges once per loop turn: give it a few turns to catch up with the replies."""
    for _ in range(100):
        _, samples = await snapshot(platform)
        if samples[(name, (("model_name", MODEL),))] == value:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_with_the_vllm_names_on_the_same_requests_are_counted_under_vllms_names(
    redis_url: str, redis_names: RedisNames
) -> None:
    async with running_platform(redis_url, redis_names, vllm_metrics=True) as platform:
        api_before, worker_before = await snapshot(platform)
        await traffic(platform.api)
        api_after, worker_after = await snapshot(platform)
    model = {"model_name": MODEL}
    # Summed over the two endpoints: four answers for the model (the refused one included), one stream.
    assert moved(api_before, api_after, "vllm:e2e_request_latency_seconds_count", **model) == 5
    assert moved(api_before, api_after, "vllm:time_to_first_token_seconds_count", **model) == 1
    later_tokens = STREAM_TOKENS - SPECULATIVE_TOKENS_PER_STEP
    for name in ("vllm:inter_token_latency_seconds_count", "vllm:time_per_output_token_seconds_count"):
        assert moved(api_before, api_after, name, **model) == later_tokens
    generated = moved(worker_before, worker_after, "gorgon_worker_generated_tokens_total", **model)
    assert moved(worker_before, worker_after, "vllm:generation_tokens_total", **model) == generated
    assert (
        moved(worker_before, worker_after, "vllm:request_success_total", finished_reason="length", **model)
        == 4
    )
    assert moved(worker_before, worker_after, "vllm:request_queue_time_seconds_count", **model) == 4
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert (gauge, (("model_name", MODEL),)) in worker_after
