"""The choices of one request: `n` per prompt (or `best_of` candidates), each a queue request of its own, relayed
concurrently and merged into one reply.

A request of one choice keeps the reply's id; the candidates of a larger one are `<id>-<k>`, k counting across
prompts. With a seed, candidate i of a prompt samples with seed + i (wrapped into int64), so the choices differ
and a seeded request is reproducible. Usage counts each prompt once and every generated token, as vLLM does; with
`best_of` the tokens of the candidates left out count too, as OpenAI bills them. `best_of` keeps, per prompt, the
`n` candidates with the highest cumulative logprob, best first (the API asks the workers for the chosen tokens'
logprobs for that).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from gorgon.core.protocol import Chunk, RequestPayload, WireSampling

T = TypeVar("T")
INT64_SPAN = 2**64
INT64_MIN = -(2**63)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One queue request of a reply: which prompt it answers (0 for chat) and its number among that prompt's
    candidates."""

    prompt_index: int
    number: int
    payload: RequestPayload


def fan_out(base: RequestPayload, prompts: Sequence[str] | None, per_prompt: int) -> list[Candidate]:
    """The candidates of a request: `per_prompt` for each of `prompts` (completions) or for `base`'s messages
    (chat, `prompts` None), in choice order."""
    inputs: Sequence[str | None] = prompts if prompts is not None else (None,)
    single = len(inputs) * per_prompt == 1
    return [
        Candidate(
            prompt_index,
            number,
            replace(
                base,
                request_id=base.request_id
                if single
                else f"{base.request_id}-{prompt_index * per_prompt + number}",
                prompt=prompt if prompt is not None else base.prompt,
                sampling=_seeded(base.sampling, number),
            ),
        )
        for prompt_index, prompt in enumerate(inputs)
        for number in range(per_prompt)
    ]


def _seeded(sampling: WireSampling, number: int) -> WireSampling:
    if sampling.seed is None or number == 0:
        return sampling
    return replace(sampling, seed=(sampling.seed + number - INT64_MIN) % INT64_SPAN + INT64_MIN)


def cumulative_logprob(chunk: Chunk) -> float:
    return sum(entry.logprob for entry in chunk.logprobs or ())


def chosen(candidates: Sequence[Candidate], finals: Sequence[Chunk], n: int) -> list[tuple[int, Chunk]]:
    """(choice index, final chunk) of each choice of a whole reply, in index order: per prompt, its candidates
    as they are, or with more candidates than `n` (`best_of`) the `n` of the highest cumulative logprob, best
    first. Index = prompt index × n + rank, as OpenAI numbers the choices of a list of prompts."""
    by_prompt: dict[int, list[Chunk]] = {}
    for candidate, final in zip(candidates, finals, strict=True):
        by_prompt.setdefault(candidate.prompt_index, []).append(final)
    choices: list[tuple[int, Chunk]] = []
    for prompt_index, prompt_finals in sorted(by_prompt.items()):
        kept = prompt_finals
        if len(prompt_finals) > n:
            kept = sorted(prompt_finals, key=cumulative_logprob, reverse=True)[:n]
        choices += [(prompt_index * n + rank, final) for rank, final in enumerate(kept)]
    return choices


def usage_of(candidates: Sequence[Candidate], finals: Sequence[Chunk]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of a reply: each prompt once, every candidate's generated tokens."""
    pairs = list(zip(candidates, finals, strict=True))
    prompt_tokens = sum(final.prompt_tokens for candidate, final in pairs if candidate.number == 0)
    return prompt_tokens, sum(final.completion_tokens for final in finals)


async def all_or_none(works: Sequence[Awaitable[T]]) -> list[T]:
    """Every work's result, in order; or the first failure, the other works cancelled."""
    if len(works) == 1:
        return [await works[0]]
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Ended:
    """What `_next` gives for a stream that has ended."""


ENDED = _Ended()


async def _next(stream: AsyncGenerator[T, None]) -> T | _Ended:
    return await anext(stream, ENDED)


async def merged(streams: Sequence[AsyncGenerator[T, None]]) -> AsyncGenerator[tuple[int, T], None]:
    """The items of every stream as they come, each with its stream's position; a stream's failure ends the
    merge with it. Closing the merge closes every stream."""
    pending: dict[asyncio.Future[T | _Ended], int] = {}
    try:
        pending = {asyncio.ensure_future(_next(stream)): position for position, stream in enumerate(streams)}
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                position = pending.pop(future)
                item = future.result()
                if isinstance(item, _Ended):
                    continue
                yield position, item
                pending[asyncio.ensure_future(_next(streams[position]))] = position
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


async def indexed(stream: AsyncGenerator[T, None]) -> AsyncGenerator[tuple[int, T], None]:
    """A single stream as `merged` gives its items (position 0), without a task per item."""
    try:
        async for item in stream:
            yield 0, item
    finally:
        await stream.aclose()
