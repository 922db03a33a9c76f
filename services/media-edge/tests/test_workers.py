"""An edge pod with two worker processes (VOXMESH_EDGE_WORKERS=2), real
processes and a real redis-server: sessions are spread over the workers, any
request reaching the pod's shared port (whichever worker the kernel picks)
reaches the worker that owns the session, /metrics counts the whole pod, and a
drain reaching one worker drains both."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from voxmesh.core.webrtc import configure_ice_hosts
from voxmesh.testing.servers import free_port, redis_server, wait_for_port
from voxmesh.testing.wait import until


def free_block(n: int) -> int:
    """A port p with p .. p+n-1 all free (the pod port and one per worker)."""
    for _ in range(50):
        base = free_port()  # below the ephemeral range (see free_port)
        if base + n > 65535:
            continue
        socks = []
        try:
            for i in range(n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port block")


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pod")
    with redis_server(workdir / "redis", appendonly=False) as url:
        port = free_block(3)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "VOXMESH_EDGE_PORT": str(port), "VOXMESH_EDGE_WORKERS": "2",
               "VOXMESH_EDGE_POD_NAME": "edge-0", "VOXMESH_EDGE_REDIS_URL": url, "VOXMESH_EDGE_DRAIN_GRACE_S": "1",
               "VOXMESH_EDGE_STT_TARGET": "127.0.0.1:1", "VOXMESH_EDGE_TTS_TARGET": "127.0.0.1:1",
               "VOXMESH_EDGE_ORCHESTRATOR_TARGET": "127.0.0.1:1"}
        log = workdir / "edge.log"
        proc = subprocess.Popen([sys.executable, "-m", "voxmesh_edge"], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        try:
            for p in (port, port + 1, port + 2):
                wait_for_port(p, timeout=60, proc=proc)
            yield port, url, proc
        except Exception:
            print(log.read_text(errors="replace")[-4000:])
            raise
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


async def offer() -> tuple[RTCPeerConnection, str]:
    configure_ice_hosts(("127.0.0.1",))
    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_two_workers_share_the_pod(pod):
    port, redis_url, proc = pod
    base = f"http://127.0.0.1:{port}"
    pc, sdp = await offer()
    # A new connection per request, so the kernel spreads them over both workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        served, sids = collections.Counter(), []
        for _ in range(8):
            async with http.post(f"{base}/v1/sessions", data=sdp, headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                served[r.headers["X-Voxmesh-Edge"]] += 1
                sids.append(r.headers["X-Voxmesh-Session"])
        assert served == {"edge-0.w0": 4, "edge-0.w1": 4}
        red = aioredis.from_url(redis_url, decode_responses=True)
        owners = {s: await red.get(f"vm:s:{s}:owner") for s in sids}
        await red.aclose()
        # The pod's /metrics is the sum over its workers, whichever answers.
        for _ in range(4):
            async with http.get(f"{base}/metrics") as r:
                assert "voxmesh_active_sessions 8.0" in await r.text()
        # Every DELETE on the shared port reaches the session's own worker.
        for sid in sids:
            async with http.delete(f"{base}/v1/sessions/{sid}") as r:
                assert r.status == 200, await r.text()
                assert r.headers["X-Voxmesh-Edge"] == owners[sid]
        async with http.get(f"{base}/metrics") as r:
            assert "voxmesh_active_sessions 0.0" in await r.text()
        # A drain reaching one worker drains the pod.
        async with http.post(f"{base}/v1/admin/drain") as r:
            assert r.status == 200
        # The worker that got it tells its siblings in the background.
        async def draining(p: int) -> bool:
            async with http.get(f"http://127.0.0.1:{p}/readyz") as r:
                return (await r.json())["draining"] is True

        for p in (port + 1, port + 2):
            await until(lambda: draining(p), timeout=10, every=0.1)
    await pc.close()
    # SIGTERM to the supervisor stops both workers.
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port + 1), timeout=1):
        raise AssertionError("a worker is still listening")
