"""The fault suite's stack: two orchestrators, two stt processes and two edges
(one llm, one tts, one Redis with AOF), real processes, shared by every fault
test. Each test puts back what it killed, so the next one starts from a whole
stack."""

from __future__ import annotations

import pytest

from faultlib import Cluster

REPLICAS = {"orchestrator": 2, "stt": 2, "edge": 2}


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    from voxmesh_cli.stack import Stack

    workdir = tmp_path_factory.mktemp("fault")
    # A short drain grace: the SIGTERM test moves its client well within it.
    s = Stack(workdir, replicas=REPLICAS, env_extra={"VOXMESH_EDGE_DRAIN_GRACE_S": "10"})
    try:
        s.start()
    except Exception:
        for name in s.procs:
            print(f"--- {name} ---\n{s.logs(name)}")
        s.stop()
        raise
    c = Cluster(s, workdir)
    try:
        yield c
    finally:
        c.redis.close()
        s.stop()
