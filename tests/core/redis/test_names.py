from __future__ import annotations

from gorgon.core.redis.names import RedisNames, as_text


def test_names_are_namespaced_per_model_and_request() -> None:
    names = RedisNames("ns")
    assert names.request_stream("m") == "ns:requests:m"
    assert names.reply_channel("api-1") == "ns:replies:api-1"
    assert names.result_key("r1") != names.cancel_key("r1")
    assert names.worker_pattern("m") == "ns:workers:m:*"


def test_names_and_ids_read_back_as_text_whether_or_not_the_client_decodes() -> None:
    assert as_text(b"1-0") == as_text("1-0") == "1-0"
