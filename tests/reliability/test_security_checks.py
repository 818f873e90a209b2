"""Security properties that live in code: API keys configured and compared only as SHA-256 digests (in constant
time), read from a mounted file as a Secret delivers them, per-key rate limits shared by every API replica,
per-address limits that believe X-Forwarded-For only from a trusted proxy, a /ready that keeps Redis's errors to
the log, no prompt, key or Redis password in the logs at the default level, and Redis AUTH and TLS taken from
the URL. The chart side (keys on by default, non-root, read-only root filesystem, NetworkPolicy, RBAC verbs) is
tested in tests/chart; the Redis ACL users in test_redis_acl.py."""

from __future__ import annotations

import hashlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import ValidationError
from reliability_harness import RestartableRedis, platform_on, wait_for, wait_for_workers
from starlette.requests import Request

from gorgon.api import deps
from gorgon.api.config import ApiSettings, hash_api_key
from gorgon.api.errors import OpenAIError
from gorgon.engine.echo import continuation
from gorgon.local.processes import (
    LocalServices,
    api_command,
    free_port,
    service_env,
    stop_all,
    wait_until_ready,
    worker_command,
)

pytestmark = pytest.mark.processes


KEY = "sk-reliability-" + uuid.uuid4().hex


def request_with_key(key: str | None) -> Request:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    return Request(
        {"type": "http", "method": "POST", "path": "/", "headers": headers, "client": ("1.2.3.4", 1)}
    )


def test_keys_are_configured_as_digests_and_a_clear_key_is_refused_without_being_echoed() -> None:
    settings = ApiSettings(key_hashes=hash_api_key(KEY).upper())
    assert settings.key_hashes == [hashlib.sha256(KEY.encode()).hexdigest()]
    with pytest.raises(ValidationError) as refused:
        ApiSettings(key_hashes=KEY)
    assert KEY not in str(refused.value)


def test_keys_are_compared_in_constant_time_against_every_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    digests = [hash_api_key(f"other-{i}") for i in range(3)] + [hash_api_key(KEY)]
    settings = ApiSettings(key_hashes=",".join(digests))
    compared: list[tuple[str, str]] = []

    def recording_compare(a: str, b: str) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(deps.hmac, "compare_digest", recording_compare)
    with pytest.raises(OpenAIError) as wrong:
        deps._caller_identity(request_with_key("sk-wrong"), settings)
    assert wrong.value.status == 401
    assert [known for _, known in compared] == digests, "every digest is compared, with hmac.compare_digest"
    assert all(KEY not in presented for presented, _ in compared), "only digests are compared, never keys"
    compared.clear()
    assert deps._caller_identity(request_with_key(KEY), settings).startswith("key:")
    assert compared and all(presented == hash_api_key(KEY) for presented, _ in compared)


def test_a_keys_rate_limit_holds_across_two_api_processes(echo_services: LocalServices) -> None:
    limit = 6
    settings = {"key_hashes": hash_api_key(KEY), "rate_limit_per_minute": str(limit)}
    apis = [echo_services.start_api(**settings), echo_services.start_api(**settings)]
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "abc", "max_tokens": 2}
    started = time.time()
    statuses = [
        httpx.post(f"{apis[i % 2]}/v1/completions", json=body, headers=headers, timeout=30).status_code
        for i in range(limit + 4)
    ]
    windows = int(time.time() // 60) - int(started // 60) + 1
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) <= limit * windows, statuses
    if windows == 1:
        assert statuses.count(200) == limit and statuses[limit:] == [429] * 4, statuses


def test_keys_from_a_mounted_file_guard_the_api(echo_services: LocalServices, tmp_path: Path) -> None:
    keys_file = tmp_path / "api-key"
    keys_file.write_text(KEY)
    api = echo_services.start_api(keys_file=str(keys_file))
    body = {"prompt": "abc", "max_tokens": 2}
    assert httpx.post(f"{api}/v1/completions", json=body, timeout=30).status_code == 401
    assert httpx.get(f"{api}/v1/models", timeout=30).status_code == 401
    good = httpx.post(
        f"{api}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )
    assert good.status_code == 200, good.text


def _statuses_in_one_window(send: Callable[[], list[int]]) -> list[int]:
    """The statuses of `send`'s requests, from a run that stayed within one rate-limit window."""
    for _ in range(3):
        window = int(time.time() // deps.RATE_WINDOW_S)
        statuses = send()
        if int(time.time() // deps.RATE_WINDOW_S) == window:
            return statuses
    raise AssertionError("every run crossed a rate-limit window")


def test_forwarded_for_sets_the_rate_limit_address_only_from_a_trusted_proxy(
    echo_services: LocalServices,
) -> None:
    body = {"prompt": "abc", "max_tokens": 2}

    def send(api: str, clients: list[str]) -> list[int]:
        return [
            httpx.post(
                f"{api}/v1/completions", json=body, headers={"X-Forwarded-For": client}, timeout=30
            ).status_code
            for client in clients
        ]

    untrusting = echo_services.start_api(rate_limit_per_minute="1")
    trusting = echo_services.start_api(rate_limit_per_minute="1", trusted_proxies="127.0.0.1")
    clients = [f"198.51.100.{uuid.uuid4().int % 250 + 1}" for _ in range(2)]
    while clients[1] == clients[0]:
        clients[1] = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    # From an untrusted peer the header is the client's own claim: both requests count against 127.0.0.1.
    assert _statuses_in_one_window(lambda: send(untrusting, clients)) in ([200, 429], [429, 429])
    # Behind a trusted proxy each forwarded address has its own allowance, and spends it.
    assert _statuses_in_one_window(lambda: send(trusting, [*clients, clients[0]])) == [200, 200, 429]


def test_ready_tells_callers_that_redis_is_down_but_not_why(own_redis: RestartableRedis) -> None:
    with platform_on(own_redis.url) as services:
        services.start_worker("echo", 0.0)
        api = services.start_api()
        own_redis.stop()
        try:
            assert wait_for(lambda: httpx.get(f"{api}/ready", timeout=5).status_code == 503, 15)
            reply = httpx.get(f"{api}/ready", timeout=5)
        finally:
            own_redis.start()
    assert reply.json()["error"]["message"] == "Redis is unreachable"
    assert str(own_redis.port) not in reply.text


def started_redis_server(url: str, arguments: list[str]) -> subprocess.Popen[bytes]:
    """A redis-server with `arguments`, once `url` answers PING."""
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--save", "", *arguments], stdout=subprocess.DEVNULL
    )
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.05)
    client.close()
    return process


def stopped(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def password_redis() -> Iterator[tuple[str, str]]:
    """A redis-server that requires a password: (URL with the password, the password)."""
    password = "pw-" + uuid.uuid4().hex
    port = free_port()
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    process = started_redis_server(url, ["--port", str(port), "--requirepass", password])
    try:
        yield url, password
    finally:
        stopped(process)


def openssl(*arguments: str | Path) -> None:
    subprocess.run(["openssl", *map(str, arguments)], check=True, capture_output=True)


def certificate_authority(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, server.crt, server.key)."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt, ext = (directory / name for name in ("server.key", "server.csr", "server.crt", "ext.cnf"))
    subject_days = ("-days", "1")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca_crt,
        *subject_days,
        "-subj",
        "/CN=gorgon-test-ca",
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca_crt,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        crt,
        *subject_days,
        "-extfile",
        ext,
    )
    return ca_crt, crt, key


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server that speaks only TLS; yields a rediss:// URL that verifies its certificate."""
    ca_crt, crt, key = certificate_authority(tmp_path)
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_crt}&ssl_cert_reqs=required"
    process = started_redis_server(
        url,
        [
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(crt),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca_crt),
            "--tls-auth-clients",
            "no",
        ],
    )
    try:
        yield url
    finally:
        stopped(process)


def test_redis_tls_from_the_url(tls_redis: str) -> None:
    plain = redis.Redis.from_url(
        tls_redis.split("?", maxsplit=1)[0].replace("rediss://", "redis://"), socket_timeout=5
    )
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
    with platform_on(tls_redis) as services:
        services.start_worker("echo", 0.0)
        api = services.start_api()
        reply = httpx.post(f"{api}/v1/completions", json={"prompt": "tls", "max_tokens": 6}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"] == continuation("tls", 6)


def start_logged(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def test_redis_auth_from_the_url_and_no_secret_or_prompt_in_the_logs(
    password_redis: tuple[str, str], tmp_path: Path
) -> None:
    url, password = password_redis
    without_password = redis.Redis.from_url(url.replace(f":{password}@", ""))
    with pytest.raises(redis.AuthenticationError):
        without_password.set("x", "1")
    without_password.close()

    namespace = f"gorgon-rel-{uuid.uuid4().hex[:12]}"
    env = service_env(url, namespace, {"GORGON_API_KEY_HASHES": hash_api_key(KEY)})
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    processes = [
        start_logged(worker_command("echo", 0.0), env, tmp_path / "worker.log"),
        start_logged(api_command(port), env, tmp_path / "api.log"),
    ]
    prompt = "confidential prompt " + uuid.uuid4().hex
    try:
        wait_until_ready(api, 60, alive=processes[1])
        wait_for_workers(url, namespace, 1)
        reply = httpx.post(
            f"{api}/v1/completions",
            json={"prompt": prompt, "max_tokens": 5},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"] == continuation(prompt, 5)
        wrong = httpx.post(
            f"{api}/v1/completions",
            json={"prompt": prompt},
            headers={"Authorization": "Bearer sk-x"},
            timeout=30,
        )
        assert wrong.status_code == 401
    finally:
        stop_all(processes, grace_s=10)
    logs = "".join(path.read_text(errors="replace") for path in tmp_path.glob("*.log"))
    assert "API on" in logs or "worker" in logs, "the services logged nothing: the check below would be empty"
    for secret in (prompt, KEY, password):
        assert secret not in logs
