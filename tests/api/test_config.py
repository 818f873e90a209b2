"""API settings: keys read from a file are kept as digests only; trusted proxies are networks."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest
from pydantic import ValidationError

from gorgon.api.config import ApiSettings, hash_api_key

KEY = "gorgon-test-key-6f1c"


def test_keys_from_a_file_join_the_configured_digests_as_digests(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{KEY}\n\n  second-key  \n{KEY}\n")
    configured = hash_api_key("configured")
    settings = ApiSettings(key_hashes=configured, keys_file=keys_file)
    assert settings.key_hashes == [
        configured,
        hashlib.sha256(KEY.encode()).hexdigest(),
        hash_api_key("second-key"),
    ]
    assert KEY not in repr(settings)


@pytest.mark.parametrize("content", [None, "", "\n  \n"])
def test_a_keys_file_that_is_missing_or_empty_stops_the_start(tmp_path: Path, content: str | None) -> None:
    keys_file = tmp_path / "keys"
    if content is not None:
        keys_file.write_text(content)
    with pytest.raises(ValidationError, match="keys_file"):
        ApiSettings(keys_file=keys_file)


def test_a_key_in_a_file_that_cannot_be_read_is_not_echoed(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_bytes(KEY.encode() + b"\xff\xfe")
    with pytest.raises(ValidationError) as refused:
        ApiSettings(keys_file=keys_file)
    assert KEY not in str(refused.value)


def test_trusted_proxies_are_addresses_or_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GORGON_API_TRUSTED_PROXIES", "10.0.0.7/8, 192.168.1.5,fd00::/8")
    assert ApiSettings().trusted_proxies == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.5/32"),
        ipaddress.ip_network("fd00::/8"),
    ]
    assert ApiSettings(trusted_proxies="").trusted_proxies == []


def test_a_trusted_proxy_that_is_no_address_is_refused() -> None:
    with pytest.raises(ValidationError, match="trusted_proxies"):
        ApiSettings(trusted_proxies="ingress-nginx")


def test_metrics_are_on_the_api_port_unless_a_port_of_their_own_is_set() -> None:
    assert ApiSettings().metrics_port == 0
    assert ApiSettings(metrics_port=9090).metrics_port == 9090
    with pytest.raises(ValidationError):
        ApiSettings(metrics_port=70000)
