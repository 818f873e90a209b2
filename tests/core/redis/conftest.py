from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gorgon.core.protocol import RequestPayload, WireSampling


@pytest.fixture
def make_payload() -> Callable[[str], RequestPayload]:
    """A streaming request payload for model "m" with the given request id."""

    def make(request_id: str) -> RequestPayload:
        return RequestPayload(
            request_id,
            "m",
            WireSampling(max_tokens=4),
            deadline=time.time() + 30,
            stream=True,
            reply_to="ns:replies:x",
        )

    return make
