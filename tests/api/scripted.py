"""An engine that says what it is told, behind the real API and worker in this process, for the tests of
structured output and tool calls through the official `openai` client.

The engine's reply to a chat is the text of its last user message (to a completion, the prompt), a few tokens a
step, over the engine tests' byte-level tokenizer. At admission the request's response_format goes through the
real grammar engine: a format it refuses is the worker's 400, and a reply the grammar forbids fails the request
(GorgonError, code `script_outside_grammar`), so a test's scripted reply is one the grammar lets a model write.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import redis.asyncio as aioredis

from gorgon.api.app import create_app
from gorgon.api.config import ApiSettings
from gorgon.core.config import RedisSettings
from gorgon.core.errors import GorgonError
from gorgon.core.redis.names import RedisNames
from gorgon.engine.grammar import GrammarViolationError, grammar_processors
from gorgon.engine.interface import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    KVCacheUsage,
    ModelInfo,
    TokenEvent,
)
from gorgon.engine.scheduler import fits_token_budget
from gorgon.engine.validation import check_request
from gorgon.worker.config import WorkerSettings
from gorgon.worker.main import Worker

# engine_tiny lives with the engine tests, whose folder pytest puts on sys.path only when it collects them
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_tiny import EOS_ID, VOCAB, byte_tokenizer

SCRIPTED_MODEL = "scripted"
TOKENS_PER_STEP = 4
WORKER_SETTINGS = WorkerSettings(
    read_block_ms=20, lease_s=2.0, heartbeat_interval_s=0.5, registration_ttl_s=5.0, shutdown_grace_s=5.0
)


@dataclass
class _Row:
    request: GenerationRequest
    reply: list[int]
    finish: FinishReason
    said: int = 0


class ScriptedEngine:
    """An Engine (engine/interface.py) whose replies are its prompts; it keeps every conversation it encoded and
    every response_format it admitted, for the tests to look at."""

    def __init__(self) -> None:
        self.tokenizer = byte_tokenizer()
        self.info = ModelInfo(name=SCRIPTED_MODEL, context_length=4096, max_batch_size=16, speculative=False)
        self.runs_inline = True
        self.conversations: list[list[ChatMessage]] = []
        self.response_formats: list[str | None] = []
        self._rows: dict[str, _Row] = {}

    def encode(self, prompt: str | Sequence[ChatMessage]) -> list[int]:
        if isinstance(prompt, str):
            script = prompt
        else:
            self.conversations.append(list(prompt))
            script = next(message.content for message in reversed(prompt) if message.role == "user")
        return list(self.tokenizer.encode(script, add_special_tokens=False))

    def admits(self, request: GenerationRequest, token_budget: int | None) -> bool:
        return fits_token_budget(request, [row.request for row in self._rows.values()], token_budget)

    def add(self, request: GenerationRequest) -> None:
        check_request(request, self.info.context_length)
        params = request.params
        reply = list(request.prompt_ids[: params.max_new_tokens])
        whole = len(reply) == len(request.prompt_ids)
        processors = grammar_processors(params, self.tokenizer, eos_token_ids={EOS_ID}, vocab_size=VOCAB)
        ending = [EOS_ID] if whole else []
        for processor in processors:
            try:
                processor.commit(reply + ending)
            except GrammarViolationError as exc:
                raise GorgonError(str(exc), code="script_outside_grammar") from exc
        self.response_formats.append(params.response_format)
        finish = FinishReason.STOP if whole else FinishReason.LENGTH
        self._rows[request.request_id] = _Row(request, reply, finish)

    def cancel(self, request_id: str) -> None:
        self._rows.pop(request_id, None)

    @property
    def num_active(self) -> int:
        return len(self._rows)

    def kv_cache_usage(self) -> KVCacheUsage | None:
        return None

    def step(self) -> list[TokenEvent]:
        events = [self._advance(row) for row in list(self._rows.values())]
        for event in events:
            if event.finish_reason is not None:
                del self._rows[event.request_id]
        return events

    def _advance(self, row: _Row) -> TokenEvent:
        tokens = row.reply[row.said : row.said + TOKENS_PER_STEP]
        row.said += len(tokens)
        return TokenEvent(
            request_id=row.request.request_id,
            token_ids=tuple(tokens),
            text=self.tokenizer.decode(tokens),
            finish_reason=row.finish if row.said == len(row.reply) else None,
            prompt_tokens=len(row.request.prompt_ids),
            completion_tokens=row.said,
        )


@dataclass
class ScriptedPlatform:
    client: openai.AsyncOpenAI
    engine: ScriptedEngine


@asynccontextmanager
async def scripted_platform(redis_url: str, names: RedisNames) -> AsyncIterator[ScriptedPlatform]:
    """The API app and a worker with a ScriptedEngine, on the session's Redis, and an openai client of the app."""
    redis = aioredis.Redis.from_url(redis_url)
    engine = ScriptedEngine()
    worker = Worker(engine, redis, names, WORKER_SETTINGS, "scripted-worker")
    worker_task = asyncio.create_task(worker.run())
    while not worker.ready:
        await asyncio.sleep(0.01)
    redis_settings = RedisSettings(REDIS_URL=redis_url, GORGON_REDIS_NAMESPACE=names.namespace)
    app = create_app(ApiSettings(), redis_settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as http:
                client = openai.AsyncOpenAI(
                    base_url="http://api/v1", api_key="unused", http_client=http, max_retries=0
                )
                yield ScriptedPlatform(client, engine)
    finally:
        worker.request_stop()
        await asyncio.wait_for(worker_task, 10)
        await redis.aclose()
