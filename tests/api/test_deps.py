"""Who a caller is for the rate limit: the API key when keys are on; without keys, the client address, taken from
X-Forwarded-For only when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress

import pytest
from starlette.requests import Request

from gorgon.api.config import ApiSettings, hash_api_key
from gorgon.api.deps import _caller_identity, client_address

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


def request_from(peer: str, forwarded_for: list[str] | None = None, key: str | None = None) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded_for or []]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return Request(
        {"type": "http", "method": "POST", "path": "/", "headers": headers, "client": (peer, 4242)}
    )


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # an untrusted peer's header is ignored
        ("10.1.2.3", [], "10.1.2.3"),  # a proxy that names nobody is the client
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the client chose the left part
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1, 10.4.4.4"], "198.51.100.1"),  # headers join, proxies skipped
        ("10.1.2.3", ["10.9.9.9, 10.4.4.4"], "10.9.9.9"),  # only proxies: the farthest
        ("10.1.2.3", ["unknown"], "10.1.2.3"),  # no address: the proxy that sent it
        ("fd00::1", ["2001:db8::7"], "2001:db8::7"),
    ],
)
def test_client_address(peer: str, forwarded_for: list[str], client: str) -> None:
    assert client_address(request_from(peer, forwarded_for), PROXIES) == client


def test_without_trusted_proxies_forwarded_for_is_never_believed() -> None:
    assert client_address(request_from("127.0.0.1", ["198.51.100.1"]), []) == "127.0.0.1"


def test_without_keys_the_rate_limit_keys_on_the_client_address() -> None:
    settings = ApiSettings(trusted_proxies="10.0.0.0/8")
    first = _caller_identity(request_from("10.1.2.3", ["198.51.100.1"]), settings)
    second = _caller_identity(request_from("10.1.2.3", ["198.51.100.2"]), settings)
    spoofed = _caller_identity(request_from("203.0.113.9", ["198.51.100.1"]), settings)
    assert (first, second, spoofed) == ("addr:198.51.100.1", "addr:198.51.100.2", "addr:203.0.113.9")


def test_with_keys_the_rate_limit_keys_on_the_key_whatever_the_address() -> None:
    settings = ApiSettings(key_hashes=hash_api_key("sesame"), trusted_proxies="10.0.0.0/8")
    identities = {
        _caller_identity(request_from(peer, [forwarded], key="sesame"), settings)
        for peer, forwarded in (("10.1.2.3", "198.51.100.1"), ("203.0.113.9", "198.51.100.2"))
    }
    assert identities == {f"key:{hash_api_key('sesame')[:16]}"}
