"""Batch helpers (engine/batch.py): how long prompts are grouped into chunked prefills."""

from __future__ import annotations

from gorgon.engine.batch import ActiveRequest, groups_by_length
from gorgon.engine.detok import IncrementalDetokenizer, StopSequenceFilter
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.engine.sampling import RowSampling


def _row(name: str, prompt_tokens: int, tokenizer) -> ActiveRequest:
    request = GenerationRequest(name, tuple(range(1, prompt_tokens + 1)), SamplingParams(max_new_tokens=4))
    return ActiveRequest(request, RowSampling(), IncrementalDetokenizer(tokenizer), StopSequenceFilter(()))


def test_long_prompts_are_chunked_together_by_length_in_arrival_order(tokenizer) -> None:
    rows = [
        _row(name, length, tokenizer) for name, length in (("a", 330), ("b", 420), ("c", 330), ("d", 700))
    ]
    groups = groups_by_length(rows)
    assert [[row.request_id for row in group] for group in groups] == [["a", "c"], ["b"], ["d"]]
