from __future__ import annotations

import pytest

from gorgon.core.errors import ConfigurationError
from gorgon_loadtest.target import Endpoint, is_loopback_host, parse_target


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback_hosts_are_recognised(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["example.com", "10.0.0.1", "0.0.0.0", "192.168.1.2", "::2", "localhost.evil"]
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    ("url", "endpoint", "expected"),
    [
        ("http://127.0.0.1:8000", Endpoint.COMPLETIONS, "http://127.0.0.1:8000/v1/completions"),
        ("http://localhost:8000/v1/", Endpoint.CHAT, "http://localhost:8000/v1/chat/completions"),
        ("http://[::1]:9000/gorgon/v1", Endpoint.COMPLETIONS, "http://[::1]:9000/gorgon/v1/completions"),
    ],
)
def test_request_url_is_built_from_the_base(url: str, endpoint: Endpoint, expected: str) -> None:
    assert parse_target(url, endpoint).request_url == expected


def test_remote_target_is_refused_without_the_flag() -> None:
    with pytest.raises(ConfigurationError, match="--allow-remote"):
        parse_target("http://example.com:8000", Endpoint.COMPLETIONS)


def test_remote_target_is_accepted_with_the_flag() -> None:
    target = parse_target("https://example.com", Endpoint.CHAT, allow_remote=True)
    assert target.request_url == "https://example.com/v1/chat/completions"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:8000", "http://127.0.0.1:99999", "http://"])
def test_malformed_urls_get_a_clear_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="--url"):
        parse_target(url, Endpoint.COMPLETIONS)
