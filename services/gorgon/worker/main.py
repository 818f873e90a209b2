"""The worker's consume loop: Redis stream → continuous batch in the engine → chunks published over pub/sub.

One loop iteration is one step boundary:

    1. admit: entries claimed from dead workers, then new ones (">"), up to the free batch slots; admitted
       entries are tokenised on the preparation thread (worker/preparation.py) while the batch keeps stepping
    2. tick (engine thread): drop cancelled rows, add the prepared requests the engine admits under the token
       budget (the others wait for a later tick), one engine.step()
    3. one round trip: publish every event through the fencing script (a final chunk also acknowledges and
       deletes its entry, in the same script), XACK + XDEL cancelled entries, read the cancel flags of the
       running rows and new entries for the free slots

The round trip is skipped when there is nothing to publish or acknowledge and the last contact with Redis is
recent (see WorkerSettings.sync_interval_s): a fast engine pays one round trip per burst of steps, not per step.

A background task heartbeats in-flight entries and the registration, and takes over stale entries on its
schedule even while every row is busy: they wait in `_claimed` and take the next free rows before new entries.
The engine is only ever touched from one thread (`_engine_thread`, or the loop for `runs_inline` engines), one
tick at a time (`encode` aside, which runs on the preparation thread).

A request fails alone (worker/failures.py): whatever its preparation, admission, sampling or detokenising raises
ends it with an error the client receives, its entry acknowledged, while the batch goes on. A step that fails as a
whole fails the requests the engine held (503, the client may retry) and the worker goes on; after
`max_failed_steps_in_row` such steps it stops, so that it is replaced.

A step that runs the device out of memory is not a broken engine but too big a batch: the cached memory is
released and the step's requests go back to the head of the admission queue, each keeping what it generated
(resumed like a redelivery, from its prompt plus its tokens so far). Admission is then capped at half the rows
that failed, and the cap rises by one row per step that succeeds until it reaches the batch size again. Such a
step neither counts as failed nor as succeeded; one that held a single row fails that request with a 503
`out_of_memory` (it cannot fit even alone) and counts as failed. The model is never reloaded for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from gorgon.core.errors import GorgonError
from gorgon.core.protocol import LOGPROB_FLOOR, Chunk, RequestPayload, WireError, WireLogprob, WireTopLogprob
from gorgon.core.redis.fencing import claim_attempt
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.publisher import EntryRef, Publication, Publisher, StepWork
from gorgon.core.redis.queue import (
    StreamEntry,
    autoclaim_stale,
    dead_letter,
    ensure_group,
    finish_entries,
    hand_back,
    heartbeat_entries,
    read_entries,
)
from gorgon.core.redis.registry import register_worker, unregister_worker
from gorgon.engine.interface import (
    ChatMessage,
    Engine,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from gorgon.worker import metrics
from gorgon.worker.config import WorkerSettings
from gorgon.worker.failures import (
    generation_error,
    is_out_of_memory,
    release_cached_device_memory,
    request_error,
    step_error,
)
from gorgon.worker.preparation import Preparation
from gorgon.worker.telemetry import RequestObserver

log = logging.getLogger(__name__)

REDIS_RETRY_FIRST_S = 0.2
REDIS_RETRY_MAX_S = 2.0
"""While Redis does not answer, the worker retries with a delay doubling from the first to the max."""
TIMEOUT_ERROR = WireError("the request's deadline passed before it finished", "timeout_error", "timeout", 504)


@dataclass
class InFlight:
    """A request the worker holds: its stream entry, fencing attempt, and what it has published so far."""

    entry_id: str
    payload: RequestPayload
    attempt: int = 1
    next_seq: int = 0
    text: str = ""
    prior_token_ids: tuple[int, ...] = ()
    request: GenerationRequest | None = None  # once prepared
    generated_ids: tuple[int, ...] = ()  # what the engine generated for `request` so far
    logprobs: tuple[WireLogprob, ...] = ()  # of the tokens generated, when the request asked for them

    @property
    def request_id(self) -> str:
        return self.payload.request_id

    def generation_request(self, prompt_ids: list[int]) -> GenerationRequest:
        sampling = self.payload.sampling
        params = SamplingParams(
            max_new_tokens=sampling.max_tokens - len(self.prior_token_ids),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop=sampling.stop,
            use_speculative=sampling.use_speculative,
            logprobs=sampling.logprobs,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            repetition_penalty=sampling.repetition_penalty,
            logit_bias=sampling.logit_bias,
            min_tokens=sampling.min_tokens,
            ignore_eos=sampling.ignore_eos,
            stop_token_ids=sampling.stop_token_ids,
            response_format=sampling.response_format,
        )
        return GenerationRequest(
            self.request_id,
            tuple(prompt_ids) + self.prior_token_ids,
            params,
            resumed_tokens=len(self.prior_token_ids),
        )

    def restart(self) -> None:
        """Start the request over in the engine from where it stands: its tokens so far join the prompt."""
        request, generated = self.request, self.generated_ids
        if request is None:
            raise RuntimeError(f"request {self.request_id} restarted before it was prepared")
        params = replace(request.params, max_new_tokens=request.params.max_new_tokens - len(generated))
        self.request = replace(
            request,
            prompt_ids=request.prompt_ids + generated,
            params=params,
            resumed_tokens=request.resumed_tokens + len(generated),
        )
        self.prior_token_ids += generated
        self.generated_ids = ()

    def engine_prompt(self) -> str | list[ChatMessage]:
        if self.payload.messages is not None:
            return [ChatMessage(role, content) for role, content in self.payload.messages]
        return self.payload.prompt or ""


@dataclass
class TickResult:
    rejected: list[tuple[InFlight, WireError]] = field(default_factory=list)
    events: list[TokenEvent] = field(default_factory=list)
    deferred: list[InFlight] = field(default_factory=list)
    stepped: bool = False  # the engine ran a step, and it did not fail as a whole
    step_failure: Exception | None = None
    failed_step_ids: list[str] = field(default_factory=list)  # what the engine held when its step failed
    out_of_memory_ids: list[str] = field(default_factory=list)  # handed back after an out-of-memory step


class Worker:
    """Consumes one model's request stream with one engine."""

    def __init__(
        self, engine: Engine, redis: AsyncRedis, names: RedisNames, settings: WorkerSettings, worker_id: str
    ) -> None:
        self.engine = engine
        self.model = engine.info.name
        self.worker_id = worker_id
        self.ready = False
        self._redis = redis
        self._names = names
        self._settings = settings
        self._max_batch = min(
            settings.max_batch_size or engine.info.max_batch_size, engine.info.max_batch_size
        )
        self._publisher = Publisher(redis, names)
        self._stream = names.request_stream(self.model)
        self._active: dict[str, InFlight] = {}
        self._claimed: list[StreamEntry] = []
        self._preparation: Preparation[InFlight, GenerationRequest] = Preparation(
            self._prepare, self._prepared
        )
        self._pending_admissions: list[InFlight] = []
        self._engine_full = False  # the last tick deferred a request the engine could not admit
        self._rejected: list[tuple[InFlight, WireError]] = []
        self._in_engine: set[str] = set()  # touched on the engine thread only
        self._failed_steps_in_row = 0
        self._row_cap: int | None = None  # rows admitted to the engine since an out-of-memory step
        self.broken = False  # the engine failed max_failed_steps_in_row steps in a row
        self._pending_drops: list[str] = []
        self._acks: list[str] = []
        self._unsent: list[tuple[InFlight, Publication]] = []
        self._cancelled: set[str] = set()
        self._observer = RequestObserver()
        self._last_sync = float("-inf")
        self._stopping = asyncio.Event()
        self._engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    def request_stop(self) -> None:
        """Stop reading new work; in-flight requests get the shutdown grace period."""
        self._stopping.set()

    async def run(self) -> None:
        await ensure_group(self._redis, self._names, self.model)
        await self._publisher.load()
        await self._register()
        self.ready = True
        heartbeat = asyncio.create_task(self._heartbeat_forever(), name="worker-heartbeat")
        try:
            await self._admit_entries(await self._read(own=True), redelivered=True)
            while not self._stopping.is_set():
                try:
                    await self._admit_new()
                    await self._step_once()
                except RedisError as exc:
                    await self._wait_for_redis(exc)
            await self._drain()
        finally:
            self.ready = False
            heartbeat.cancel()
            self._preparation.close()
            await unregister_worker(self._redis, self._names, self.model, self.worker_id)
            await self._publisher.close()
            self._engine_thread.shutdown(wait=False)

    # --- admission ---------------------------------------------------------------------------------------------

    async def _read(
        self, *, own: bool, block_ms: int | None = None, room_taken: int = 0
    ) -> list[StreamEntry]:
        room = self._max_batch - len(self._active) - len(self._claimed) - room_taken
        if room <= 0:
            return []
        if not own:
            return await self._publisher.read_new(self.model, self.worker_id, room, block_ms)
        return await read_entries(
            self._redis, self._names, self.model, self.worker_id, room, block_ms, own=True
        )

    async def _admit_new(self) -> None:
        """Admit entries taken over from dead workers, as many as there are free rows (the rest keep their
        place for the next free ones); an idle worker also blocks for new entries here (a busy one reads new
        entries in its per-step round trip)."""
        free_rows = max(0, self._max_batch - len(self._active))
        claimed, self._claimed = self._claimed[:free_rows], self._claimed[free_rows:]
        await self._admit_entries(claimed, redelivered=True)
        if self._active:
            return
        entries = await self._read(own=False, block_ms=self._settings.read_block_ms)
        if entries and self._settings.first_batch_wait_s > 0:
            await asyncio.sleep(self._settings.first_batch_wait_s)
            entries += await self._read(own=False, room_taken=len(entries))
        if entries:
            self._last_sync = time.monotonic()  # just read: the first steps need no round trip of their own
        await self._admit_entries(entries, redelivered=False)

    async def _admit_entries(self, entries: list[StreamEntry], *, redelivered: bool) -> None:
        """Take entries into the batch; they join the engine once prepared (`_prepared`)."""
        admitted = []
        for entry_id, payload in entries:
            if payload is None:
                await dead_letter(self._redis, self._names, self.model, entry_id, b"", "invalid payload")
                continue
            if payload.request_id in self._active:
                continue
            item = InFlight(entry_id=entry_id, payload=payload)
            if redelivered and not await self._resume(item):
                continue
            self._active[payload.request_id] = item
            admitted.append(item)
            self._observer.admitted(entry_id, payload, redelivered=redelivered)
        self._preparation.start(admitted)

    def _prepare(self, item: InFlight) -> GenerationRequest:
        """On the preparation thread: the engine's request, its prompt tokenised (a chat through its template)."""
        if len(item.prior_token_ids) >= item.payload.sampling.max_tokens:
            raise GorgonError("the request had already produced max_tokens tokens", code="already_complete")
        return item.generation_request(self.engine.encode(item.engine_prompt()))

    def _prepared(self, outcomes: list[tuple[InFlight, GenerationRequest | WireError]]) -> None:
        """Prepared requests wait for the next tick; those that failed, for their error's publication. A
        request that left meanwhile (cancelled, expired, superseded) is dropped."""
        for item, outcome in outcomes:
            if item.request_id not in self._active:
                continue
            if isinstance(outcome, WireError):
                self._rejected.append((item, outcome))
            else:
                item.request = outcome
                self._pending_admissions.append(item)

    async def _resume(self, item: InFlight) -> bool:
        """Start a new attempt of a redelivered request; False when there is nothing left to do for it."""
        ttl = self._ttl_for(item.payload)
        claim = await claim_attempt(self._redis, self._names, item.request_id, ttl)
        if claim.finished or claim.cancelled:
            await finish_entries(self._redis, self._names, self.model, [item.entry_id])
            return False
        item.attempt = claim.attempt
        if claim.attempt > self._settings.max_deliveries:
            await self._dead_letter(item)
            return False
        item.next_seq = len(claim.published)
        item.text = "".join(chunk.text for chunk in claim.published)
        item.prior_token_ids = tuple(token for chunk in claim.published for token in chunk.token_ids)
        log.info("resuming %s as attempt %d after %d chunks", item.request_id, item.attempt, item.next_seq)
        metrics.REDELIVERIES.inc()
        return True

    async def _dead_letter(self, item: InFlight) -> None:
        error = WireError(
            f"the request failed on {item.attempt - 1} workers in a row and was given up",
            "server_error",
            "worker_failure",
            503,
        )
        await self._publish_error(item, error)
        await dead_letter(
            self._redis, self._names, self.model, item.entry_id, item.payload.encode(), "too many deliveries"
        )
        metrics.DEAD_LETTERED.inc()
        log.warning("dead-lettered %s after %d deliveries", item.request_id, item.attempt - 1)

    # --- one step ----------------------------------------------------------------------------------------------

    async def _step_once(self) -> None:
        if not (self._pending_admissions or self._rejected or self.engine.num_active):
            await self._preparation.wait(self._settings.read_block_ms / 1000)
        admissions, self._pending_admissions = self._pending_admissions, []
        fenced, self._pending_drops = self._pending_drops, []
        cancelled, expired = self._cancelled & self._active.keys(), self._expired_requests()
        leaving = cancelled | expired
        drops = fenced + [request_id for request_id in self._active if request_id in leaving]
        admissions = [
            item for item in admissions if item.request_id in self._active and item.request_id not in drops
        ]
        result = TickResult()
        if self._active or drops:
            started = time.perf_counter()
            result = await self._run_tick(admissions, drops)
            metrics.observe_step(time.perf_counter() - started, len(self._active))
        self._pending_admissions = self._restarted(result) + result.deferred + self._pending_admissions
        self._engine_full = bool(result.deferred)
        self._count_step(result)
        publications = self._settle(result, cancelled, expired)
        if publications or self._acks or self._unsent or (self._active and self._sync_due()):
            await self._sync(publications)
        metrics.BATCH_SIZE.set(len(self._active))

    def _sync_due(self) -> bool:
        """A step with nothing to publish skips its Redis round trip unless the last contact with Redis (a
        round trip's reply, or a read that admitted work) is `sync_interval_s` old: engines that step in
        microseconds (echo) then pay one round trip per burst, not per step."""
        return time.monotonic() - self._last_sync >= self._settings.sync_interval_s

    def _settle(
        self, result: TickResult, cancelled: set[str], expired: set[str]
    ) -> list[tuple[InFlight, Publication]]:
        """Remove dropped requests from the batch; the publications this step owes its clients."""
        for request_id in cancelled:
            item = self._active.pop(request_id, None)
            if item is not None:
                self._acks.append(item.entry_id)
                self._observer.cancelled(request_id)
        publications = [
            (item, self._error_publication(item, TIMEOUT_ERROR))
            for request_id in expired - cancelled
            if (item := self._active.get(request_id)) is not None
        ]
        rejected, self._rejected = self._rejected + result.rejected, []
        failures = [
            (item, error)
            for item, error in rejected
            if item.request_id in self._active and item.request_id not in expired
        ]
        failures += self._step_failures(result)
        failures += [
            (item, generation_error(event.error))
            for event in result.events
            if event.error is not None and (item := self._active.get(event.request_id)) is not None
        ]
        for item, error in failures:
            metrics.FAILED_REQUESTS.labels(error.code).inc()
            log.warning("request %s failed alone: %s %s", item.request_id, error.status, error.message)
        publications += [(item, self._error_publication(item, error)) for item, error in failures]
        for event in result.events:
            item = self._active.get(event.request_id)
            publication = self._publication(item, event) if item is not None and event.error is None else None
            if item is not None and publication is not None:
                publications.append((item, publication))
        return publications

    def _step_failures(self, result: TickResult) -> list[tuple[InFlight, WireError]]:
        if result.step_failure is None:
            return []
        error = step_error(result.step_failure)
        return [
            (item, error)
            for request_id in result.failed_step_ids
            if (item := self._active.get(request_id)) is not None
        ]

    def _restarted(self, result: TickResult) -> list[InFlight]:
        """The requests of an out-of-memory step, ready to go back into the engine."""
        items = [item for request_id in result.out_of_memory_ids if (item := self._active.get(request_id))]
        for item in items:
            item.restart()
        return items

    def _count_step(self, result: TickResult) -> None:
        """Stop the worker (to be replaced) once its engine has failed too many steps in a row; after an
        out-of-memory step, cap the rows admitted and lift the cap again one row per successful step."""
        if result.out_of_memory_ids:
            self._row_cap = max(1, len(result.out_of_memory_ids) // 2)
            metrics.FAILED_STEPS.inc()
            log.warning(
                "out of device memory at %d rows: retrying them with at most %d rows in the batch",
                len(result.out_of_memory_ids),
                self._row_cap,
            )
        if result.stepped:
            self._failed_steps_in_row = 0
            if self._row_cap is not None:
                self._row_cap = self._row_cap + 1 if self._row_cap + 1 < self._max_batch else None
        if result.step_failure is None:
            return
        metrics.FAILED_STEPS.inc()
        self._failed_steps_in_row += 1
        if self._failed_steps_in_row >= self._settings.max_failed_steps_in_row and not self.broken:
            log.error(
                "the engine failed %d steps in a row; stopping this worker so that it is replaced",
                self._failed_steps_in_row,
            )
            self.broken = True
            self.request_stop()

    async def _sync(self, publications: list[tuple[InFlight, Publication]]) -> None:
        """One round trip: publish (final chunks acknowledge their entries), ack cancelled entries, read cancel
        flags and new entries. If Redis fails, the publications and acks are kept for the next round trip (no
        chunk is skipped)."""
        publications = self._unsent + publications
        self._unsent = publications
        # While the engine defers a request (its token or memory budget is spent), read nothing more: the rest
        # wait in the stream, where another worker can take them.
        full = self._stopping.is_set() or self._engine_full
        room = 0 if full else self._max_batch - len(self._active) - len(self._claimed)
        work = StepWork(
            publications=[publication for _, publication in publications],
            ack_ids=self._acks,
            running_ids=list(self._active),
            read_count=room,
        )
        reply = await self._publisher.sync_step(self.model, self.worker_id, work)
        self._last_sync = time.monotonic()
        self._unsent = []
        self._acks = []
        self._cancelled = reply.cancelled
        for (item, publication), accepted in zip(publications, reply.published, strict=True):
            if not accepted:
                self._fenced_out(item)
            elif publication.chunk.final:
                self._active.pop(item.request_id, None)
                self._observer.finished(item.request_id, publication.chunk.finish_reason or "error")
        await self._admit_entries(reply.new_entries, redelivered=False)
        if self._acks and not self._active:
            await finish_entries(self._redis, self._names, self.model, self._acks)
            self._acks = []

    async def _wait_for_redis(self, error: RedisError) -> None:
        """Retry until Redis answers again, then restore what a restarted server lost (the consumer group, the
        publish script, the registration). The batch stays in the engine meanwhile."""
        log.warning("Redis failed (%s); retrying until it answers", error)
        delay = REDIS_RETRY_FIRST_S
        while not self._stopping.is_set():
            await asyncio.sleep(delay)
            try:
                await ensure_group(self._redis, self._names, self.model)
                await self._publisher.load()
                await self._register()
            except RedisError as exc:
                log.debug("Redis still failing: %s", exc)
                delay = min(2 * delay, REDIS_RETRY_MAX_S)
                continue
            log.info("Redis answers again; resuming with %d requests in flight", len(self._active))
            return

    async def _run_tick(self, admissions: list[InFlight], drops: list[str]) -> TickResult:
        """On the engine thread, so the event loop keeps heartbeating during long steps; engines whose steps
        take microseconds (`runs_inline`, the echo engine without delay) run on the loop: a thread hand-off
        would cost more than the step."""
        if self.engine.runs_inline:
            return self._tick(admissions, drops)
        return await asyncio.get_running_loop().run_in_executor(
            self._engine_thread, self._tick, admissions, drops
        )

    def _tick(self, admissions: list[InFlight], drops: list[str]) -> TickResult:
        """Runs on the engine thread: the only place the engine is called (besides construction and encode)."""
        result = TickResult()
        for request_id in drops:
            self.engine.cancel(request_id)
            self._in_engine.discard(request_id)
        for item in admissions:
            try:
                admitted = self._add_to_engine(item)
            except Exception as exc:  # the request fails alone, whatever adding it raised
                if not isinstance(exc, GorgonError):
                    log.exception("adding request %s to the engine failed", item.request_id)
                result.rejected.append((item, request_error(exc)))
                continue
            if not admitted:
                result.deferred.append(item)
        if self.engine.num_active:
            self._step_engine(result)
        return result

    def _add_to_engine(self, item: InFlight) -> bool:
        """Admit `item` unless the engine has no room for it under the token budget (it waits for a later step)."""
        request = item.request
        if request is None:
            raise RuntimeError(f"request {item.request_id} reached the engine unprepared")
        if self._row_cap is not None and self.engine.num_active >= self._row_cap:
            return False
        if not self.engine.admits(request, self._settings.max_batch_tokens):
            return False
        self.engine.add(request)
        self._in_engine.add(item.request_id)
        return True

    def _step_engine(self, result: TickResult) -> None:
        """One engine step into `result`. A step that fails as a whole fails every request the engine holds:
        they are cancelled, so the engine starts the next step empty."""
        try:
            result.events = self.engine.step()
        except Exception as exc:  # the worker outlives its engine's step
            self._fail_step(result, exc)
            return
        result.stepped = True
        self._in_engine.difference_update(
            event.request_id for event in result.events if event.finish_reason or event.error
        )

    def _fail_step(self, result: TickResult, exc: Exception) -> None:
        """Empty the engine after a step that failed as a whole: an out-of-memory step of several rows hands its
        requests back (module docstring), any other failure fails them."""
        held = sorted(self._in_engine)
        for request_id in held:
            self.engine.cancel(request_id)
        self._in_engine.clear()
        if is_out_of_memory(exc):
            release_cached_device_memory()
            if len(held) > 1:
                result.out_of_memory_ids = held
                return
        log.exception("an engine step failed; failing the %d requests it held", len(held), exc_info=exc)
        result.step_failure = exc
        result.failed_step_ids = held

    def _expired_requests(self) -> set[str]:
        now = time.time()
        return {request_id for request_id, item in self._active.items() if item.payload.deadline < now}

    # --- publishing --------------------------------------------------------------------------------------------

    def _publication(self, item: InFlight, event: TokenEvent) -> Publication | None:
        final = event.finish_reason is not None
        item.text += event.text
        item.generated_ids += event.token_ids
        logprobs = wire_logprobs(event.logprobs)
        item.logprobs += logprobs
        self._observer.token_event(event)
        if not item.payload.stream and not final:
            return None
        prior = len(item.prior_token_ids)
        chunk = Chunk(
            request_id=item.request_id,
            attempt=item.attempt,
            seq=item.next_seq,
            text=event.text if item.payload.stream else item.text,
            token_ids=event.token_ids,
            final=final,
            finish_reason=str(event.finish_reason) if final else None,
            prompt_tokens=event.prompt_tokens - prior,
            completion_tokens=event.completion_tokens + prior,
            published_at=time.time(),
            logprobs=_asked(item, logprobs if item.payload.stream else item.logprobs),
        )
        item.next_seq += 1
        result = _whole_text_result(chunk, item.text, _asked(item, item.logprobs)) if final else None
        finishes = EntryRef(self._stream, item.entry_id) if final else None
        return Publication(
            chunk, item.payload.stream, result, self._ttl_for(item.payload), item.payload.reply_to, finishes
        )

    def _error_publication(
        self, item: InFlight, error: WireError, *, finishes_entry: bool = True
    ) -> Publication:
        """The final chunk reporting `error`; it finishes the entry unless the caller disposes of it itself."""
        chunk = Chunk(
            request_id=item.request_id,
            attempt=item.attempt,
            seq=item.next_seq,
            final=True,
            error=error,
            published_at=time.time(),
        )
        item.next_seq += 1
        finishes = EntryRef(self._stream, item.entry_id) if finishes_entry else None
        return Publication(
            chunk, item.payload.stream, chunk, self._ttl_for(item.payload), item.payload.reply_to, finishes
        )

    async def _publish_error(self, item: InFlight, error: WireError) -> bool:
        """Tell the client; the entry is left to the caller (the dead-letter stream takes it)."""
        publication = self._error_publication(item, error, finishes_entry=False)
        (accepted,) = await self._publisher.publish([publication])
        if not accepted:
            self._fenced_out(item)
        return accepted

    def _fenced_out(self, item: InFlight) -> None:
        """Another worker took this request over: stop generating it, and leave its entry alone."""
        log.warning("attempt %d of %s was superseded; dropping it", item.attempt, item.request_id)
        self._observer.superseded(item.request_id)
        self._active.pop(item.request_id, None)
        self._pending_drops.append(item.request_id)

    def _ttl_for(self, payload: RequestPayload) -> int:
        return int(max(0.0, payload.deadline - time.time())) + self._settings.result_ttl_s

    # --- heartbeat, takeover, shutdown -------------------------------------------------------------------------

    async def _register(self) -> None:
        info = {
            "worker_id": self.worker_id,
            "model": self.model,
            "context_length": self.engine.info.context_length,
            "max_batch_size": self._max_batch,
            "speculative": self.engine.info.speculative,
            "active": len(self._active),
        }
        await register_worker(
            self._redis, self._names, self.model, self.worker_id, info, self._settings.registration_ttl_s
        )

    async def _heartbeat_forever(self) -> None:
        lease_ms = int(self._settings.lease_s * 1000)
        while True:
            try:
                await self._heartbeat_once(lease_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed; retrying")
            await asyncio.sleep(self._settings.heartbeat_interval_s)

    async def _heartbeat_once(self, lease_ms: int) -> None:
        held = [item.entry_id for item in self._active.values()] + [entry_id for entry_id, _ in self._claimed]
        await heartbeat_entries(self._redis, self._names, self.model, self.worker_id, held)
        if self._stopping.is_set():
            return
        await self._register()
        await self._take_over_stale(lease_ms)

    async def _take_over_stale(self, lease_ms: int) -> None:
        """Claim the entries of dead workers, on this schedule whether or not a row is free: they wait in
        `_claimed` (heartbeated as ours) and take the next free rows before any new entry. A worker with free
        rows claims as many as it has; a busy one up to a batch's worth, and only entries stale for two more
        heartbeats, so that a worker with free rows gets them first."""
        free_rows = self._max_batch - len(self._active) - len(self._claimed)
        count = free_rows if free_rows > 0 else self._max_batch - len(self._claimed)
        if count <= 0:
            return
        busy_margin_ms = 0 if free_rows > 0 else int(2 * self._settings.heartbeat_interval_s * 1000)
        stale = await autoclaim_stale(
            self._redis, self._names, self.model, self.worker_id, lease_ms + busy_margin_ms, count
        )
        if stale:
            log.info("took over %d stale entries (%d rows free)", len(stale), max(free_rows, 0))
            self._claimed += stale

    async def _drain(self) -> None:
        """After a stop request: keep stepping until the batch is empty or the grace period ends."""
        deadline = time.monotonic() + self._settings.shutdown_grace_s
        held_back = self._claimed
        self._claimed = []
        while self._active and time.monotonic() < deadline:
            await self._step_once()
        await finish_entries(self._redis, self._names, self.model, self._acks)
        self._acks = []
        leftover = [item.entry_id for item in self._active.values()] + [entry_id for entry_id, _ in held_back]
        if leftover:
            log.warning("handing back %d unfinished requests", len(leftover))
            lease_ms = int(self._settings.lease_s * 1000)
            await hand_back(self._redis, self._names, self.model, self.worker_id, leftover, lease_ms)
        self._active.clear()


def wire_logprobs(logprobs: tuple[TokenLogprob, ...] | None) -> tuple[WireLogprob, ...]:
    """An event's logprobs as a chunk carries them (-inf raised to LOGPROB_FLOOR)."""
    return tuple(
        WireLogprob(
            entry.token,
            max(entry.logprob, LOGPROB_FLOOR),
            entry.token_bytes,
            tuple(
                WireTopLogprob(top.token, max(top.logprob, LOGPROB_FLOOR), top.token_bytes)
                for top in entry.top
            ),
        )
        for entry in logprobs or ()
    )


def _asked(item: InFlight, logprobs: tuple[WireLogprob, ...]) -> tuple[WireLogprob, ...] | None:
    """`logprobs` if the request asked for them, else None (what the chunk says when none were asked)."""
    return logprobs if item.payload.sampling.logprobs is not None else None


def _whole_text_result(chunk: Chunk, text: str, logprobs: tuple[WireLogprob, ...] | None) -> Chunk:
    return Chunk(
        request_id=chunk.request_id,
        attempt=chunk.attempt,
        seq=chunk.seq,
        text=text,
        final=True,
        finish_reason=chunk.finish_reason,
        prompt_tokens=chunk.prompt_tokens,
        completion_tokens=chunk.completion_tokens,
        published_at=chunk.published_at,
        logprobs=logprobs,
    )
