"""Test helpers shared across test folders (tests/ is on sys.path through the root conftest)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping

import redis

from gorgon.local.processes import LocalServices


def delete_namespace(redis_url: str, namespace: str) -> None:
    """Remove every key of `namespace`; a Redis that is down (a fault test stopped it) has nothing to clean."""
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{namespace}:*"):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        client.close()


@contextlib.contextmanager
def services_in_fresh_namespace(
    redis_url: str,
    extra_env: Mapping[str, str] | None = None,
    *,
    prefix: str = "gorgon-test",
    grace_s: float = 10,
) -> Iterator[LocalServices]:
    """API and worker processes under a namespace of their own; stopped and their keys removed on exit."""
    namespace = f"{prefix}-{uuid.uuid4().hex[:12]}"
    services = LocalServices(redis_url, namespace, dict(extra_env or {}))
    try:
        yield services
    finally:
        services.stop(grace_s=grace_s)
        delete_namespace(redis_url, namespace)
