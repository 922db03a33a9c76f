from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from voxmesh.testing.servers import child_env, free_port, stop_process, wait_for_grpc_health

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # tests/support.py
REPO = HERE.parents[2]


@pytest.fixture(scope="session")
def smart_turn_path() -> str:
    """The real Smart Turn v3.2 model, extracted from the pipecat-ai wheel once."""
    dest = REPO / ".cache" / "models" / "smart-turn-v3.2-cpu.onnx"
    if not dest.exists():
        subprocess.run([sys.executable, str(REPO / "services/stt/scripts/fetch_smart_turn.py"), str(dest)], check=True)
    return str(dest)


@pytest.fixture(scope="session")
def stt_server(smart_turn_path, tmp_path_factory):
    """The real service as its own process (`python -m voxmesh_stt`) on free ports."""
    port, metrics_port = free_port(), free_port()
    log = (tmp_path_factory.mktemp("stt") / "stt.log").open("w")
    env = child_env(
        VOXMESH_STT_PORT=str(port),
        VOXMESH_STT_METRICS_PORT=str(metrics_port),
        VOXMESH_STT_HOST="127.0.0.1",
        VOXMESH_STT_SMART_TURN_PATH=smart_turn_path,
        VOXMESH_STT_GRACE_S="2",
    )
    proc = subprocess.Popen([sys.executable, "-m", "voxmesh_stt"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for_grpc_health(f"127.0.0.1:{port}", timeout=90, proc=proc)
        yield {"target": f"127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "proc": proc, "log": log.name}
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("speech")


def pytest_collection_modifyitems(items):
    # Everything here but the pure unit files loads a real model.
    for item in items:
        if os.path.basename(str(item.fspath)) in ("test_service.py", "test_models.py"):
            item.add_marker(pytest.mark.models)
