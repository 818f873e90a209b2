"""`gorgon operator` (gorgon_operator/cli.py; not test_cli.py: pytest needs unique module names)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import kubernetes
import pytest

from gorgon.cli import main
from gorgon_operator import k8s
from gorgon_operator.cli import build_reconciler

pytestmark = pytest.mark.processes


def test_without_cluster_credentials_the_operator_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["operator", "--namespace", "ml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gorgon: error: no Kubernetes credentials")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("setting", "lists"), [(None, False), ("true", True)])
def test_cluster_wide_listing_is_off_unless_the_setting_turns_it_on(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, lists: bool
) -> None:
    made: list[bool] = []

    class RecordingActuator(k8s.KubernetesActuator):
        def __init__(self, apps: object, core: object, *, list_cluster_gpus: bool = False) -> None:
            made.append(list_cluster_gpus)

    monkeypatch.setattr(k8s, "KubernetesActuator", RecordingActuator)
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda: None)
    if setting is None:
        monkeypatch.delenv("GORGON_OPERATOR_LIST_CLUSTER_GPUS", raising=False)
    else:
        monkeypatch.setenv("GORGON_OPERATOR_LIST_CLUSTER_GPUS", setting)
    build_reconciler()
    assert made == [lists]


def test_help_names_the_liveness_port_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["operator", "--help"])
    assert "--health-port" in capsys.readouterr().out


KUBECONFIG_TO_NOWHERE = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:9"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
users: [{name: u, user: {token: t}}]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_operator_serves_its_liveness_endpoint(tmp_path: Path) -> None:
    """kopf starts with our handlers and answers /healthz, even while the API server is unreachable."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG_TO_NOWHERE)
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "GORGON_OPERATOR_HEALTH_PORT": str(port)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    command = [sys.executable, "-m", "gorgon.cli", "operator", "--namespace", "ml"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert process.poll() is None, "the operator exited"
                assert time.monotonic() < deadline, "no liveness endpoint within 60 s"
                time.sleep(0.2)
        assert reply.status_code == 200
        assert reply.json() == {"pools": True}
    finally:
        process.kill()  # a graceful stop waits out kopf's retries against the missing API server
        process.wait(timeout=30)
