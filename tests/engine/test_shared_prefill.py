"""n choices of one prompt share its prefill: identical prompts in one prefill are forwarded once, the other rows
take a copy of the KV cache, and every row then decodes exactly as it would alone."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from engine_tiny import emitted_tokens, empty_cache, random_heads, run_to_completion

from gorgon.engine import decode
from gorgon.engine.decode import distinct_prompts, prefill
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.engine.parts import ModelParts
from gorgon.engine.sampling import RowSampling

PROMPT = (7, 8, 9, 10, 11, 12, 13)
OTHER = (200, 3, 3, 141, 90, 4, 4)  # the same length: one prefill group on CPU
LONG_PROMPT = tuple(range(40, 100))  # 60 tokens: four chunks of 16


@pytest.fixture
def forwarded_tokens(monkeypatch) -> list[int]:
    """Token counts (rows x tokens) of every base-model forward, in order."""
    counts: list[int] = []
    real_forward = decode.forward_tokens

    def counting(parts, cache, input_ids, *args, **kwargs):
        counts.append(input_ids.numel())
        return real_forward(parts, cache, input_ids, *args, **kwargs)

    monkeypatch.setattr(decode, "forward_tokens", counting)
    return counts


def test_distinct_prompts_name_each_prompts_first_row() -> None:
    firsts, sources = distinct_prompts([[1, 2], [3, 4], [1, 2], [1, 2], [5]])
    assert firsts == [0, 1, 4]
    assert sources == [0, 1, 0, 0, 2]


def test_rows_of_one_prompt_get_the_cache_and_first_token_of_a_prefill_alone(
    tiny_model, forwarded_tokens
) -> None:
    parts = ModelParts(tiny_model.get_decoder(), tiny_model.get_output_embeddings(), random_heads())
    prompts = [list(PROMPT), list(OTHER), list(PROMPT), list(PROMPT)]
    shared = empty_cache(tiny_model, 4, 64)
    outcome = prefill(parts, shared, prompts, [RowSampling()] * 4)
    assert forwarded_tokens == [2 * len(PROMPT)]
    alone = empty_cache(tiny_model, 2, 64)
    expected = prefill(parts, alone, prompts[:2], [RowSampling()] * 2)
    rows = torch.tensor([0, 1, 0, 0])
    assert torch.equal(shared.storage, alone.storage.index_select(1, rows))
    assert shared.lengths.tolist() == [len(PROMPT)] * 4
    assert outcome.next_tokens.tolist() == expected.next_tokens[rows].tolist()
    assert outcome.draft_topk is not None and expected.draft_topk is not None
    assert torch.equal(outcome.draft_topk, expected.draft_topk[rows])


def _choices(prompt: tuple[int, ...], params: Sequence[SamplingParams]) -> list[GenerationRequest]:
    return [GenerationRequest(f"x-{index}", prompt, row) for index, row in enumerate(params)]


@pytest.mark.parametrize("heads", [None, random_heads()])
def test_n_choices_forward_their_prompt_once_and_decode_as_they_would_alone(
    make_engine, forwarded_tokens, heads
) -> None:
    params = [
        SamplingParams(max_new_tokens=14),
        SamplingParams(max_new_tokens=14, temperature=0.9, seed=1),
        SamplingParams(max_new_tokens=14, temperature=0.9, seed=2),
        SamplingParams(max_new_tokens=10, presence_penalty=1.0, logprobs=2),
    ]
    requests = [
        *_choices(PROMPT, params),
        GenerationRequest("other", OTHER, SamplingParams(max_new_tokens=9)),
    ]
    alone = {
        request.request_id: run_to_completion(make_engine(heads, cycle_shapes=heads is not None), [request])[
            request.request_id
        ]
        for request in requests
    }
    forwarded_tokens.clear()
    engine = make_engine(heads, cycle_shapes=heads is not None)
    for request in requests:
        engine.add(request)
    first = engine.step()
    assert forwarded_tokens == [2 * len(PROMPT)], "one forward, each distinct prompt once"
    assert len(first) == len(requests)
    together = run_to_completion(engine, [])
    for request in requests:
        events = [event for event in first if event.request_id == request.request_id] + together.get(
            request.request_id, []
        )
        assert emitted_tokens(events) == emitted_tokens(alone[request.request_id]), request.request_id
        assert [event.logprobs for event in events] == [event.logprobs for event in alone[request.request_id]]
    sampled = [emitted_tokens(alone[f"x-{index}"]) for index in (1, 2)]
    assert sampled[0] != sampled[1], "the rows sampled apart"


def test_a_long_prompts_chunks_are_forwarded_once_for_all_its_choices(make_engine, forwarded_tokens) -> None:
    params = [SamplingParams(max_new_tokens=8), SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)] * 2
    requests = _choices(LONG_PROMPT, params)
    alone = {
        request.request_id: emitted_tokens(
            run_to_completion(make_engine(prefill_chunk_tokens=16), [request])[request.request_id]
        )
        for request in requests
    }
    forwarded_tokens.clear()
    engine = make_engine(prefill_chunk_tokens=16)
    for request in requests:
        engine.add(request)
    while engine.partial or engine.scheduler.waiting:
        engine.step()
    assert forwarded_tokens == [16, 16, 16, 12]
    collected = run_to_completion(engine, [])
    assert {name: emitted_tokens(events) for name, events in collected.items()} == {
        name: tokens[1:] for name, tokens in alone.items()
    }
