"""What every engine refuses at `add` (a 400 for the client), and the extreme values it takes."""

from __future__ import annotations

import pytest

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.core.limits import (
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_LOGPROBS,
    MAX_STOP_SEQUENCE_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_STOP_TOKEN_IDS,
)
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.engine.validation import check_request, check_token_ids

SMALLEST_FLOAT = 5e-324


def _request(prompt: tuple[int, ...] = (1, 2, 3), **params: object) -> GenerationRequest:
    return GenerationRequest("r", prompt, SamplingParams(**params))


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": SMALLEST_FLOAT, "top_p": SMALLEST_FLOAT},
        {"temperature": 2.0, "top_p": 1.0, "seed": -(2**63)},
        {"seed": 2**63 - 1, "stop": ("x" * MAX_STOP_SEQUENCE_CHARS,) * MAX_STOP_SEQUENCES},
        {"logprobs": MAX_LOGPROBS, "presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"logprobs": 0, "repetition_penalty": SMALLEST_FLOAT, "min_tokens": 128, "ignore_eos": True},
        {
            "logit_bias": tuple(
                (token, 100.0 if token % 2 else -100.0) for token in range(MAX_LOGIT_BIAS_ENTRIES)
            )
        },
        {"stop_token_ids": tuple(range(MAX_STOP_TOKEN_IDS))},
    ],
)
def test_extreme_values_the_api_admits_pass(params: dict) -> None:
    check_request(_request(**params), context_length=256)


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (_request(()), "prompt"),
        (_request(max_new_tokens=0), "max_tokens"),
        (_request(temperature=float("inf")), "temperature"),
        (_request(temperature=-1.0), "temperature"),
        (_request(top_p=float("nan")), "top_p"),
        (_request(top_p=1.5), "top_p"),
        (_request(stop=("a",) * (MAX_STOP_SEQUENCES + 1)), "stop"),
        (_request(stop=("a" * (MAX_STOP_SEQUENCE_CHARS + 1),)), "stop"),
        (_request(logprobs=-1), "logprobs"),
        (_request(logprobs=MAX_LOGPROBS + 1), "logprobs"),
        (_request(presence_penalty=2.5), "presence_penalty"),
        (_request(frequency_penalty=float("nan")), "frequency_penalty"),
        (_request(repetition_penalty=0.0), "repetition_penalty"),
        (_request(repetition_penalty=float("inf")), "repetition_penalty"),
        (_request(logit_bias=((5, 100.5),)), "logit_bias"),
        (_request(logit_bias=((-1, 1.0),)), "logit_bias"),
        (
            _request(logit_bias=tuple((token, 1.0) for token in range(MAX_LOGIT_BIAS_ENTRIES + 1))),
            "logit_bias",
        ),
        (_request(min_tokens=-1), "min_tokens"),
        (_request(max_new_tokens=5, min_tokens=6), "min_tokens"),
        (_request(stop_token_ids=tuple(range(MAX_STOP_TOKEN_IDS + 1))), "stop_token_ids"),
        (_request(stop_token_ids=(-3,)), "stop_token_ids"),
    ],
)
def test_what_no_step_could_serve_is_refused_naming_the_parameter(
    request_: GenerationRequest, param: str
) -> None:
    with pytest.raises(GorgonError) as raised:
        check_request(request_, context_length=64)
    assert raised.value.param == param


def test_prompt_and_max_tokens_past_the_context_overflow() -> None:
    with pytest.raises(ContextOverflowError, match="maximum context length is 64"):
        check_request(_request(tuple(range(60)), max_new_tokens=5), context_length=64)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (SamplingParams(logit_bias=((0, 1.0), (100, 1.0))), "logit_bias"),
        (SamplingParams(stop_token_ids=(99, 100)), "stop_token_ids"),
    ],
)
def test_token_ids_must_lie_inside_the_vocabulary(params: SamplingParams, param: str) -> None:
    check_token_ids(SamplingParams(logit_bias=((99, 1.0),), stop_token_ids=(0, 99)), vocab_size=100)
    with pytest.raises(GorgonError) as raised:
        check_token_ids(params, vocab_size=100)
    assert raised.value.param == param
