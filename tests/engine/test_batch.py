"""Batch helpers (engine/batch.py): how admitted rows are grouped into prefill forwards."""

from __future__ import annotations

import torch

from gorgon.engine.batch import ActiveRequest, prefill_groups
from gorgon.engine.detok import IncrementalDetokenizer, StopSequenceFilter
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.engine.sampling import RowSampling


def _row(name: str, prompt_tokens: int, tokenizer) -> ActiveRequest:
    request = GenerationRequest(name, tuple(range(1, prompt_tokens + 1)), SamplingParams(max_new_tokens=4))
    return ActiveRequest(request, RowSampling(), IncrementalDetokenizer(tokenizer), StopSequenceFilter(()))


def test_cpu_prefills_one_forward_per_prompt_length_in_arrival_order(tokenizer) -> None:
    rows = [_row(name, length, tokenizer) for name, length in (("a", 33), ("b", 42), ("c", 33), ("d", 7))]
    groups = prefill_groups(rows, torch.device("cpu"))
    assert [[row.request_id for row in group] for group in groups] == [["a", "c"], ["b"], ["d"]]


def test_gpus_prefill_every_admitted_row_in_one_padded_forward(tokenizer) -> None:
    rows = [_row("a", 33, tokenizer), _row("b", 42, tokenizer)]
    assert prefill_groups(rows, torch.device("cuda")) == [rows]
