"""What the engine's next step does, and who may join the running batch.

Admission: a request joins when its tokens (prompt + max_new_tokens) fit the token budget beside the requests
already admitted and not finished; an empty batch always takes one. Admitted requests wait here for a step.

Prefill first: a step with waiting requests and room in the batch prefills them (their first tokens come out) and
decodes nothing; otherwise it decodes the running batch. A prefill step takes whole prompts, in arrival order, up to
the prefill chunk's tokens in all (at least one prompt), so that when many requests arrive together the first of
them start streaming after a fraction of the whole prefill. A prompt longer than the chunk is written a chunk per
step instead (`chunked` rows), those steps taking turns with the others, so a long prompt holds the running batch
up by one chunk at a time.

Shape: a decoding step is plain, a chain or a tree, as the ShapeSelector picks for the batch from measured cost
and acceptance (engine/shapes.py); plain while the batch has no drafts. A step drafts for the next one only when
the next one will speculate (drafting costs a projection).

Importing this module loads no torch: the echo engine admits by the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gorgon.engine.interface import GenerationRequest

if TYPE_CHECKING:
    from gorgon.engine.batch import ActiveRequest, Batch
    from gorgon.engine.shapes import ShapeSelector
    from gorgon.engine.tree import TreeBuffers


def budget_tokens(request: GenerationRequest) -> int:
    """What a request holds of the token budget: its prompt and every token it may generate."""
    return len(request.prompt_ids) + request.params.max_new_tokens


def fits_token_budget(
    request: GenerationRequest, admitted: Iterable[GenerationRequest], token_budget: int | None
) -> bool:
    """Whether `request` may join the `admitted` requests under `token_budget` (None: no budget)."""
    if token_budget is None:
        return True
    reserved = sum(budget_tokens(other) for other in admitted)
    return reserved == 0 or reserved + budget_tokens(request) <= token_budget


@dataclass(frozen=True, slots=True)
class Prefill:
    """Waiting rows that join the batch this step (in admission order)."""

    rows: list[ActiveRequest]


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """The next chunk of the long prompts being prefilled (the engine holds their partial batches)."""


@dataclass(frozen=True, slots=True)
class Decode:
    """One decoding step of the running batch in `shape`; `want_drafts`: draft for the next step."""

    batch: Batch
    shape: TreeBuffers
    want_drafts: bool


class Scheduler:
    """Admission, prefill first and the speculation shape of the Medusa engine's steps."""

    def __init__(
        self, selector: ShapeSelector, *, max_batch_size: int, drafts: bool, prefill_tokens: int
    ) -> None:
        self.selector = selector
        self.max_batch_size = max_batch_size
        self.prefill_tokens = prefill_tokens  # prompt tokens of one prefill step (the prefill chunk)
        self.drafts = drafts  # whether the engine has heads to draft with
        self.waiting: list[ActiveRequest] = []
        self.chunked: list[ActiveRequest] = []  # rows whose long prompts are prefilled a chunk per step
        self._chunk_turn = True

    def admits(self, request: GenerationRequest, running: Batch | None, token_budget: int | None) -> bool:
        admitted = [row.request for row in self.waiting + self.chunked]
        if running is not None:
            admitted += [row.request for row in running.rows]
        return fits_token_budget(request, admitted, token_budget)

    def enqueue(self, row: ActiveRequest) -> None:
        self.waiting.append(row)

    def cancel(self, request_id: str) -> None:
        self.waiting = [row for row in self.waiting if row.request_id != request_id]
        self.end_chunking([request_id])

    def end_chunking(self, request_ids: Iterable[str]) -> None:
        leaving = set(request_ids)
        self.chunked = [row for row in self.chunked if row.request_id not in leaving]

    def next_step(self, running: Batch | None) -> Prefill | PrefillChunk | Decode | None:
        """A prefill chunk every other step while long prompts are being prefilled; else prefill the waiting rows
        that fit the batch and the step (`joining`), else decode the running batch; None when there is nothing to
        do."""
        if self.chunked and (running is None or self._chunk_turn):
            self._chunk_turn = False
            return PrefillChunk()
        self._chunk_turn = True
        room = self.max_batch_size - len(running or ()) - len(self.chunked)
        if self.waiting and room > 0:
            joining = self.joining(room)
            self.waiting = self.waiting[len(joining) :]
            return Prefill(joining)
        if running is None:
            return None
        speculative_rows = _speculative_rows(running)
        shape = self.selector.choose(len(running), speculative_rows=speculative_rows)
        if running.draft_topk is None:
            shape = self.selector.plain
        return Decode(running, shape, self._wants_drafts(len(running), speculative_rows))

    def joining(self, room: int) -> list[ActiveRequest]:
        """The first waiting rows, at most `room`, whose whole prompts fit one prefill step together (the first
        always does); a prompt longer than a chunk joins freely, its prefill being chunked over later steps."""
        joining: list[ActiveRequest] = []
        tokens = 0
        for row in self.waiting[:room]:
            whole = row.prompt_tokens if row.prompt_tokens <= self.prefill_tokens else 0
            if joining and tokens + whole > self.prefill_tokens:
                break
            joining.append(row)
            tokens += whole
        return joining

    def record(self, step: Decode, seconds: float, emitted: Sequence[Sequence[int]]) -> None:
        """A finished decoding step: its time and the tokens each speculative row gained, for the selector."""
        gained = [
            len(tokens)
            for tokens, row in zip(emitted, step.batch.rows, strict=True)
            if row.sampling.speculative
        ]
        self.selector.record(step.shape, len(step.batch), seconds, gained)

    def _wants_drafts(self, batch_size: int, speculative_rows: int) -> bool:
        """Draft for the next step only when the selector would then speculate."""
        if not self.drafts or speculative_rows == 0:
            return False
        return self.selector.choose(batch_size, speculative_rows=speculative_rows).num_nodes > 1


def _speculative_rows(batch: Batch) -> int:
    return sum(row.sampling.speculative for row in batch.rows)
