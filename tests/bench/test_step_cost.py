"""`gorgon bench step-cost`: its argument checks."""

from __future__ import annotations

import pytest

from gorgon.bench.step_cost import _contexts, _sizes
from gorgon.core.errors import ConfigurationError


@pytest.mark.parametrize("text", ["", "0,4", "a,b"])
def test_bad_sizes_are_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--nodes"):
        _sizes(text)


@pytest.mark.parametrize("text", ["", "0,256", "1900,x"])
def test_bad_contexts_are_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--contexts"):
        _contexts(text)


def test_contexts_are_optional() -> None:
    assert _contexts(None) is None
    assert _contexts("256, 1900") == (256, 1900)
