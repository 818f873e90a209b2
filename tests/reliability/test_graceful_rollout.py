"""An API pod told to stop (SIGTERM) in a rollout: it takes no new connection, drains the streams and whole
requests it serves for up to its grace period (GORGON_API_SHUTDOWN_GRACE_S, the pod's terminationGracePeriodSeconds
less a margin) — longer than the few seconds uvicorn allows by default — and exits; the worker goes on."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time

import httpx
import pytest
from reliability_harness import distinct_prompt, platform_on, problems, stream_many, wait_for

from gorgon.engine.echo import continuation
from gorgon.local.processes import api_command, free_port, spawn, wait_until_ready

pytestmark = pytest.mark.processes

log = logging.getLogger(__name__)

STEP_DELAY_S = 0.01
STREAMS = 4
MAX_TOKENS = 700
"""About 8 s of decoding: longer than uvicorn's default drain, shorter than the grace period below."""
GRACE_S = 30


def test_a_stopping_api_finishes_its_streams_within_its_grace_period(redis_url: str) -> None:
    with platform_on(redis_url) as services:
        worker = services.start_worker("echo", STEP_DELAY_S, read_block_ms="20")
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        process = spawn(api_command(port), {**services.env, "GORGON_API_SHUTDOWN_GRACE_S": str(GRACE_S)})
        services.processes.append(process)
        wait_until_ready(api, 60, alive=process)
        services.wait_for_workers(30)

        streams: list = []
        whole: list[httpx.Response] = []
        body = {"prompt": distinct_prompt(9), "max_tokens": MAX_TOKENS // 2, "use_speculative": False}
        clients = [
            threading.Thread(
                target=lambda: streams.extend(asyncio.run(stream_many(api, STREAMS, MAX_TOKENS, 60)))
            ),
            threading.Thread(
                target=lambda: whole.append(httpx.post(f"{api}/v1/completions", json=body, timeout=60))
            ),
        ]
        for client in clients:
            client.start()
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert wait_for(lambda: refuses_connections(port), 5), "the stopping API still took new connections"
        for client in clients:
            client.join(60)
        exit_status = process.wait(timeout=GRACE_S + 10)
        drained_s = time.monotonic() - stopped_at

        log.info(
            "SIGTERM with %d streams and 1 whole request open: %d streams completed, whole %d, exit %s after %.1f s",
            STREAMS,
            sum(o.completed for o in streams),
            whole[0].status_code,
            exit_status,
            drained_s,
        )
        assert problems(streams) == [] and all(o.completed for o in streams), [o.error for o in streams]
        assert whole[0].status_code == 200
        assert whole[0].json()["choices"][0]["text"] == continuation(body["prompt"], MAX_TOKENS // 2)
        assert exit_status in (0, -signal.SIGTERM), "uvicorn ends by re-raising the signal it drained for"
        assert 5 < drained_s < GRACE_S, "the drain outlasted uvicorn's default of 5 s and ended by itself"
        assert worker.poll() is None


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0
