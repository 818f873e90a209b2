"""`gorgon api`: the API service (uvicorn, one process; scale with replicas)."""

from __future__ import annotations

import argparse
import logging

from gorgon.api.config import ApiSettings
from gorgon.local.settings_table import setting_default

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help=f"listen address (default: {setting_default(ApiSettings, 'host')})")
    parser.add_argument(
        "--port", type=int, help=f"listen port (default: {setting_default(ApiSettings, 'port')})"
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - keeps `gorgon --help` fast

    from gorgon.api.app import create_app  # noqa: PLC0415
    from gorgon.api.http_protocol import HeadCoalescingProtocol  # noqa: PLC0415
    from gorgon.core.config import get_redis_settings  # noqa: PLC0415
    from gorgon.core.redis.connection import require_redis_url  # noqa: PLC0415
    from gorgon.core.tracing import configure_tracing  # noqa: PLC0415

    configure_tracing("gorgon-api")

    require_redis_url(get_redis_settings().url)
    overrides = {"host": args.host, "port": args.port}
    settings = ApiSettings(**{key: value for key, value in overrides.items() if value is not None})
    log.info("API on http://%s:%d", settings.host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http=HeadCoalescingProtocol,
        # The client address is the API's own decision (GORGON_API_TRUSTED_PROXIES, api/deps.py): uvicorn would
        # otherwise believe X-Forwarded-For from any peer on 127.0.0.1.
        proxy_headers=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # open streams finish before the API exits
    )
    return 0
