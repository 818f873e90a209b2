"""What every engine refuses at `add` (a 400 for the client), and the extreme values it takes."""

from __future__ import annotations

import pytest

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.core.limits import MAX_STOP_SEQUENCE_CHARS, MAX_STOP_SEQUENCES
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.engine.validation import check_request

SMALLEST_FLOAT = 5e-324


def _request(prompt: tuple[int, ...] = (1, 2, 3), **params: object) -> GenerationRequest:
    return GenerationRequest("r", prompt, SamplingParams(**params))


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": SMALLEST_FLOAT, "top_p": SMALLEST_FLOAT},
        {"temperature": 2.0, "top_p": 1.0, "seed": -(2**63)},
        {"seed": 2**63 - 1, "stop": ("x" * MAX_STOP_SEQUENCE_CHARS,) * MAX_STOP_SEQUENCES},
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
