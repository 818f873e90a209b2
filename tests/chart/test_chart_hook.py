"""The `helm test` hook: its script runs here against the real API (with an echo worker on the test Redis, and
API keys on, as the chart installs it), and against a stand-in server that answers with errors the real API
cannot be made to give on purpose."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from chart_render import CHART_DIR, Manifest, container, find, render_chart, run_helm

from gorgon.api.config import hash_api_key
from gorgon_testing import services_in_fresh_namespace

pytestmark = pytest.mark.processes

API_KEY = "gorgon-hook-test-key"


class _FakeApi(BaseHTTPRequestHandler):
    completion_status = 200
    completion_text = " Hello!"
    received: ClassVar[list[dict]] = []
    authorizations: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._reply(200, {"object": "list", "data": [{"id": "SmolLM2-135M-Instruct", "object": "model"}]})
        else:
            self._reply(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(body)
        type(self).authorizations.append(self.headers.get("Authorization"))
        choice = {"index": 0, "text": type(self).completion_text, "finish_reason": "length"}
        self._reply(type(self).completion_status, {"object": "text_completion", "choices": [choice]})

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def fake_api() -> Iterator[str]:
    _FakeApi.completion_status, _FakeApi.completion_text, _FakeApi.received = 200, " Hello!", []
    _FakeApi.authorizations = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


CHART_SECRET = {("gorgon-api-key", "api-key"): API_KEY}
"""The Secret the chart generates, holding API_KEY."""


def _run_hook(
    test_pod: Manifest, url: str, secrets: dict[tuple[str, str], str] = CHART_SECRET
) -> subprocess.CompletedProcess[str]:
    """The hook's script with its environment; `secrets` holds the values of the Secret keys it reads."""
    smoke = container(test_pod, "smoke")
    env = {
        item["name"]: item.get("value") or _secret_value(item["valueFrom"], secrets) for item in smoke["env"]
    }
    env["GORGON_URL"] = url
    assert smoke["command"][0] == "python"
    command = [sys.executable, *smoke["command"][1:], *smoke["args"]]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def _secret_value(source: dict, secrets: dict[tuple[str, str], str]) -> str:
    reference = source["secretKeyRef"]
    return secrets[(reference["name"], reference["key"])]


def test_hook_is_a_helm_test_pointing_at_the_api_service(default_manifests: list[Manifest]) -> None:
    test_pod = find(default_manifests, "Pod", "-test")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = find(default_manifests, "Service", "-api")
    url = next(item["value"] for item in container(test_pod, "smoke")["env"] if item["name"] == "GORGON_URL")
    assert url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


@pytest.fixture(scope="module")
def real_api(redis_url: str) -> Iterator[str]:
    with services_in_fresh_namespace(redis_url, prefix="gorgon-hook") as services:
        services.start_worker("echo", 0.001)
        yield services.start_api(key_hashes=hash_api_key(API_KEY))


def test_hook_passes_against_the_real_api(default_manifests: list[Manifest], real_api: str) -> None:
    result = _run_hook(find(default_manifests, "Pod", "-test"), real_api)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "POST /v1/completions 200" in result.stdout


def test_hook_sends_the_configured_request(default_manifests: list[Manifest], fake_api: str) -> None:
    result = _run_hook(find(default_manifests, "Pod", "-test"), fake_api)
    assert result.returncode == 0, result.stderr
    assert _FakeApi.received == [{"model": "SmolLM2-135M-Instruct", "prompt": "Say hello.", "max_tokens": 8}]
    assert _FakeApi.authorizations == [f"Bearer {API_KEY}"]


def test_the_real_api_refuses_the_hook_without_the_right_key(
    default_manifests: list[Manifest], real_api: str
) -> None:
    """The pass above needs the key: the API the hook runs against enforces keys, as the chart installs it."""
    result = _run_hook(
        find(default_manifests, "Pod", "-test"), real_api, {("gorgon-api-key", "api-key"): "wrong"}
    )
    assert result.returncode != 0
    assert "401" in result.stdout + result.stderr
    assert "POST /v1/completions" not in result.stdout


def test_hook_sends_the_first_key_of_an_existing_secret(fake_api: str) -> None:
    manifests = render_chart(
        set_values={"api.auth.existingSecret": "team-keys", "api.auth.secretKey": "keys"}
    )
    test_pod = find(manifests, "Pod", "-test")
    result = _run_hook(test_pod, fake_api, {("team-keys", "keys"): "team-key-one\nteam-key-two\n"})
    assert result.returncode == 0, result.stderr
    assert _FakeApi.authorizations == ["Bearer team-key-one"]


def test_hook_sends_no_key_when_keys_are_off(fake_api: str) -> None:
    test_pod = find(render_chart(set_values={"api.auth.enabled": "false"}), "Pod", "-test")
    result = _run_hook(test_pod, fake_api)
    assert result.returncode == 0, result.stderr
    assert _FakeApi.authorizations == [None]


@pytest.mark.parametrize(("status", "text"), [(500, " Hello!"), (200, "")])
def test_hook_fails_on_a_broken_completion(
    default_manifests: list[Manifest], fake_api: str, status: int, text: str
) -> None:
    _FakeApi.completion_status, _FakeApi.completion_text = status, text
    result = _run_hook(find(default_manifests, "Pod", "-test"), fake_api)
    assert result.returncode != 0


def _notes_commands() -> str:
    """The shell commands NOTES.txt tells a user to run against $GORGON_URL (port-forward left out)."""
    result = run_helm("install", "gorgon", str(CHART_DIR), "--dry-run=client", "--namespace", "inference")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("NOTES:", 1)[1].splitlines()
    commands: list[str] = []
    continuing, quote_open = False, False
    for line in lines:
        stripped = line.strip()
        if continuing or stripped.startswith(("curl ", "MODEL=")):
            commands.append(stripped)
            quote_open ^= stripped.count("'") % 2 == 1
            continuing = stripped.endswith("\\") or quote_open
    return "\n".join(commands)


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq on PATH")
def test_the_curl_commands_in_the_notes_work_against_the_real_api(real_api: str) -> None:
    script = "set -euo pipefail\n" + _notes_commands()
    assert script.count("curl ") == 5
    result = subprocess.run(
        ["bash", "-c", script],
        env={"GORGON_URL": real_api, "GORGON_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"status"' in result.stdout
    assert '"text_completion"' in result.stdout
    assert "data: [DONE]" in result.stdout
