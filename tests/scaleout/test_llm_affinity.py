"""LLM prefix-cache affinity with two real llm processes (`python -m
voxmesh_llm`, the packaged SmolLM2 model): the orchestrator's LlmClient keeps
each session's calls on one replica (its ring owner), different sessions use
both replicas, and when a session's replica dies its calls move to the other
one (the next in its ring order) and stay there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from voxmesh.core.routing.ring import Ring
from voxmesh.testing.servers import free_port, wait_for_grpc_health

pytestmark = pytest.mark.models


async def served_since(before: dict["Replica", float], want: dict["Replica", int]) -> dict["Replica", float]:
    """Each replica's requests since `before`, once every one has reached `want`.

    The client has its answer as soon as the last chunk arrives; the replica
    counts the request a moment later, when its handler returns. So poll (up to
    10 s) rather than read once, and return what was counted: a test can then
    still see a count that went past what it wanted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        got = {r: await loop.run_in_executor(None, r.served) - n for r, n in before.items()}
        if all(got[r] >= want.get(r, 0) for r in got) or loop.time() > deadline:
            return got
        await asyncio.sleep(0.05)

MESSAGES = [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Say hi."}]


class Replica:
    def __init__(self, name: str, workdir) -> None:
        self.name = name
        self.port, self.metrics_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "VOXMESH_LLM_PORT": str(self.port),
               "VOXMESH_LLM_METRICS_PORT": str(self.metrics_port), "VOXMESH_LLM_HOST": "127.0.0.1",
               # one thread each: two replicas share this machine's cores
               "VOXMESH_LLM_N_THREADS": "1", "VOXMESH_LLM_N_THREADS_BATCH": "1"}
        self.log = workdir / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "voxmesh_llm"], env=env,
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)

    def served(self) -> float:
        """Generate requests this replica has answered (any outcome)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("voxmesh_llm_requests_total{"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("llm")
    reps = [Replica("llm-a", workdir), Replica("llm-b", workdir)]
    try:
        for r in reps:
            wait_for_grpc_health(r.target, timeout=180, proc=r.proc)
        yield reps
    except Exception:
        for r in reps:
            print(f"--- {r.name} ---\n{r.log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        for r in reps:
            with contextlib.suppress(Exception):
                r.kill()


def session_owned_by(targets: list[str], target: str) -> str:
    ring = Ring(targets)
    return next(f"s{i}" for i in range(1000) if ring.owner(f"s{i}") == target)


async def test_a_sessions_calls_stay_on_one_replica_until_it_dies(replicas):
    from voxmesh_orchestrator.llm_client import LlmClient

    a, b = replicas
    targets = [a.target, b.target]
    client = LlmClient(targets)
    by_target = {a.target: a, b.target: b}
    s_a, s_b = session_owned_by(targets, a.target), session_owned_by(targets, b.target)
    try:
        before = {r: r.served() for r in replicas}
        for _ in range(3):
            for sid in (s_a, s_b):
                text = await client.complete(sid, MESSAGES, max_tokens=3)
                assert isinstance(text, str)
        # Each session went to its own ring owner, every time: 3 calls each.
        assert await served_since(before, {a: 3, b: 3}) == {a: 3, b: 3}
        # s_a's replica dies: its calls move to the next in its ring order (b) and stay there.
        a.kill()
        before_b = {b: b.served()}
        for _ in range(3):
            assert isinstance(await client.complete(s_a, MESSAGES, max_tokens=3), str)
        assert await served_since(before_b, {b: 3}) == {b: 3}
        assert Ring(targets).owners(s_a) == [a.target, b.target]  # the fallback order that was used
        assert by_target[Ring(targets).owners(s_a)[1]] is b
    finally:
        await client.close()
