"""`gorgon bench step-cost`: its argument checks."""

from __future__ import annotations

import pytest

from gorgon.bench.step_cost import _sizes
from gorgon.core.errors import ConfigurationError


@pytest.mark.parametrize("text", ["", "0,4", "a,b"])
def test_bad_sizes_are_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--nodes"):
        _sizes(text)
