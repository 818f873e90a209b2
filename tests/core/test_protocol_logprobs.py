"""Logprobs on the wire: a chunk carries them intact, and a worker turns the engine's into the chunk's (-inf, a
masked token, becomes OpenAI's floor, since JSON has no infinity)."""

from __future__ import annotations

import math

import orjson
import pytest

from gorgon.core.protocol import (
    LOGPROB_FLOOR,
    PROTOCOL_VERSION,
    Chunk,
    ProtocolError,
    WireLogprob,
    WireTopLogprob,
)
from gorgon.engine.interface import TokenLogprob, TopLogprob
from gorgon.worker.main import wire_logprobs


def test_a_chunk_round_trips_with_logprobs_none_or_empty() -> None:
    entry = WireLogprob(
        "é", -0.5, (195, 169), (WireTopLogprob("é", -0.5, (195, 169)), WireTopLogprob("e", -1.25, (101,)))
    )
    for logprobs in ((entry, entry), (), None):
        chunk = Chunk("r1", attempt=1, seq=2, text="éé", token_ids=(1, 2), logprobs=logprobs)
        assert Chunk.decode(chunk.encode()) == chunk


@pytest.mark.parametrize(
    "logprobs", [[{"token": "a"}], [{"token": "a", "logprob": "high", "token_bytes": [97]}], 5]
)
def test_malformed_logprobs_are_a_protocol_error(logprobs: object) -> None:
    body = {"v": PROTOCOL_VERSION, "request_id": "r1", "attempt": 1, "seq": 0, "logprobs": logprobs}
    with pytest.raises(ProtocolError):
        Chunk.decode(orjson.dumps(body))


def test_the_worker_floors_minus_infinity_and_keeps_the_rest() -> None:
    engine = (
        TokenLogprob(
            "a", -math.inf, (97,), (TopLogprob("b", -0.1, (98,)), TopLogprob("c", -math.inf, (99,)))
        ),
        TokenLogprob("b", -0.75, (98,)),
    )
    assert wire_logprobs(engine) == (
        WireLogprob(
            "a",
            LOGPROB_FLOOR,
            (97,),
            (WireTopLogprob("b", -0.1, (98,)), WireTopLogprob("c", LOGPROB_FLOOR, (99,))),
        ),
        WireLogprob("b", -0.75, (98,)),
    )
    assert wire_logprobs(None) == ()
    encoded = Chunk("r1", 1, 0, logprobs=wire_logprobs(engine)).encode()
    assert Chunk.decode(encoded).logprobs == wire_logprobs(engine)
