from __future__ import annotations

import orjson
import pytest

from gorgon.core.protocol import (
    PROTOCOL_VERSION,
    Chunk,
    ProtocolError,
    RequestPayload,
    WireError,
    WireSampling,
    decode_chunks,
)


def test_request_payload_round_trips_with_chat_messages_and_stops() -> None:
    payload = RequestPayload(
        request_id="r1",
        model="m",
        sampling=WireSampling(max_tokens=5, temperature=0.7, top_p=0.9, seed=3, stop=("\n", "END")),
        deadline=1234.5,
        stream=True,
        reply_to="gorgon:replies:api-1",
        messages=(("system", "be brief"), ("user", "hi")),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert RequestPayload.decode(payload.encode()) == payload


def test_chunk_round_trips_with_an_error() -> None:
    chunk = Chunk(
        "r1", attempt=2, seq=7, final=True, error=WireError("gone", "server_error", "worker_failure", 503)
    )
    assert Chunk.decode(chunk.encode()) == chunk


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        orjson.dumps({"v": PROTOCOL_VERSION + 1, "request_id": "r1", "attempt": 1, "seq": 0}),
        orjson.dumps({"request_id": "r1", "attempt": 1, "seq": 0}),
        orjson.dumps({"v": PROTOCOL_VERSION, "request_id": "r1", "surprise": 1}),
    ],
)
def test_foreign_or_other_version_messages_are_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        Chunk.decode(raw)


def test_payload_without_sampling_is_refused() -> None:
    with pytest.raises(ProtocolError):
        RequestPayload.decode(orjson.dumps({"v": PROTOCOL_VERSION, "request_id": "r1"}))


def test_a_reply_message_carries_one_chunk_or_an_array_of_them() -> None:
    first, second = Chunk("r1", attempt=1, seq=0, text="a"), Chunk("r2", attempt=1, seq=3, final=True)
    assert decode_chunks(first.encode()) == [first]
    assert decode_chunks(b"[" + first.encode() + b"," + second.encode() + b"]") == [first, second]
    with pytest.raises(ProtocolError):
        decode_chunks(b"[" + first.encode() + b", 2]")
