"""Where the load goes. Load is sent only to this machine (loopback) unless the user says otherwise."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from gorgon.core.errors import ConfigurationError

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


class Endpoint(StrEnum):
    """The OpenAI endpoint a load test drives."""

    COMPLETIONS = "completions"
    CHAT = "chat"

    @property
    def path(self) -> str:
        return "/v1/completions" if self is Endpoint.COMPLETIONS else "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Target:
    """A validated base URL (scheme://host:port[/prefix], no trailing /v1), the endpoint to drive, and the
    server's name in reports (empty when a load test drives a single server)."""

    base_url: str
    endpoint: Endpoint
    name: str = ""

    @property
    def request_url(self) -> str:
        return self.base_url + self.endpoint.path

    @property
    def models_url(self) -> str:
        return self.base_url + "/v1/models"


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (by name or literal address; no DNS lookup)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_target(url: str, endpoint: Endpoint, *, allow_remote: bool = False, name: str = "") -> Target:
    """Validate `url` and refuse hosts other than this machine unless `allow_remote` is set."""
    try:
        parsed = urlsplit(url)
        host = parsed.hostname
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ConfigurationError(f"--url {url!r} is not a valid URL: {exc}", param="url") from exc
    if parsed.scheme not in {"http", "https"} or not host:
        raise ConfigurationError(
            f"--url {url!r} must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000",
            param="url",
        )
    if not allow_remote and not is_loopback_host(host):
        raise ConfigurationError(
            f"--url host {host!r} is not this machine (localhost, 127.0.0.1, [::1]); "
            "pass --allow-remote to load-test another host on purpose",
            param="url",
        )
    prefix = parsed.path.rstrip("/").removesuffix("/v1")
    return Target(base_url=f"{parsed.scheme}://{parsed.netloc}{prefix}", endpoint=endpoint, name=name)
