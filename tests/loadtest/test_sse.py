from __future__ import annotations

import pytest

from gorgon_loadtest.sse import DONE, Chunk, MalformedChunkError, SseDecoder, parse_chunk, timed_payloads
from gorgon_loadtest.target import Endpoint


def decode(lines: list[str]) -> list[str]:
    decoder = SseDecoder()
    payloads = [payload for line in lines if (payload := decoder.feed(line)) is not None]
    trailing = decoder.flush()
    return [*payloads, trailing] if trailing is not None else payloads


def test_decoder_yields_one_payload_per_event() -> None:
    lines = ['data: {"a": 1}', "", 'data: {"a": 2}', "", "data: [DONE]", ""]
    assert decode(lines) == ['{"a": 1}', '{"a": 2}', DONE]


def test_decoder_joins_multiline_data_and_skips_comments_and_other_fields() -> None:
    lines = [": keep-alive", "event: message", "id: 7", "data: first", "data: second", ""]
    assert decode(lines) == ["first\nsecond"]


def test_decoder_handles_crlf_and_a_missing_final_blank_line() -> None:
    assert decode(["data: x\r", "\r", "data: [DONE]"]) == ["x", DONE]


def test_decoder_ignores_blank_lines_between_events() -> None:
    assert decode(["", "", "data: x", "", ""]) == ["x"]


def test_timed_payloads_take_the_time_of_the_piece_that_completes_each_event() -> None:
    stream = 'data: {"a": 1}\n\ndata: "é"\r\n\r\ndata: [DONE]\n\n'.encode()
    inside_the_character = stream.index("é".encode()) + 1
    pieces = [(1.0, stream[:5]), (2.0, stream[5:inside_the_character]), (3.0, stream[inside_the_character:])]
    assert list(timed_payloads(pieces)) == [(2.0, '{"a": 1}'), (3.0, '"é"'), (3.0, DONE)]


def test_timed_payloads_leave_out_an_event_the_stream_leaves_open() -> None:
    assert list(timed_payloads([(1.0, b"data: x\n\ndata: y\n")])) == [(1.0, "x")]


def test_completion_chunk_gives_text_and_finish_reason() -> None:
    payload = '{"choices": [{"index": 0, "text": "hello", "finish_reason": "length"}]}'
    assert parse_chunk(payload, Endpoint.COMPLETIONS) == Chunk(text="hello", finish_reason="length")


def test_chat_chunk_reads_delta_content_and_role_only_chunk_has_no_text() -> None:
    content = '{"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}'
    role = '{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}'
    assert parse_chunk(content, Endpoint.CHAT).text == "hi"
    assert parse_chunk(role, Endpoint.CHAT).text == ""


def test_usage_chunk_gives_token_counts() -> None:
    payload = '{"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}}'
    chunk = parse_chunk(payload, Endpoint.COMPLETIONS)
    assert (chunk.prompt_tokens, chunk.completion_tokens, chunk.text) == (5, 12, "")


def test_error_event_carries_the_message() -> None:
    payload = '{"error": {"message": "worker lost", "type": "server_error"}}'
    assert parse_chunk(payload, Endpoint.CHAT).error == "worker lost"


@pytest.mark.parametrize("payload", ["not json", "[1, 2]"])
def test_non_object_payload_is_malformed(payload: str) -> None:
    with pytest.raises(MalformedChunkError):
        parse_chunk(payload, Endpoint.COMPLETIONS)
