"""Three real edge processes (`python -m voxmesh_edge`) with a static membership
and a real redis-server: new sessions are spread over the edges, signaling that
lands on the wrong edge reaches the session's owner (offer, DELETE, reconnect),
a draining edge takes no new sessions and keeps its live one, and a reconnect
for a session whose edge died is taken over by a live edge.

Signaling needs no stt or tts (the edges point at a closed port; the sessions'
stt loops just retry), so the test is about routing. The orchestrator is a TEST
DOUBLE that puts every session mid-conversation (a committed user turn whose
reply has not come yet), so a drain keeps it rather than moving it between
turns. Clients are real aiortc PeerConnections; where a session must be live,
its connection is completed over loopback. Reconnects use the real resume
token from the create answer (the edges share the token secret)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import aiohttp
import grpc
import pytest
import redis.asyncio as aioredis
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from voxmesh.core.webrtc import configure_ice_hosts
from voxmesh.testing.servers import free_port, redis_server, wait_for_port
from voxmesh.v1 import orchestrator_pb2 as opb
from voxmesh.v1 import orchestrator_pb2_grpc

NAMES = ("edge-0", "edge-1", "edge-2")
SECRET = "test-secret-shared-by-the-edges"


class OrchestratorDouble(orchestrator_pb2_grpc.OrchestratorServicer):
    """TEST DOUBLE: config, then a user turn whose reply never comes, held open
    until the edge ends the stream (a sync server: one pool thread per stream)."""

    def Converse(self, request_iterator, context):
        next(request_iterator)  # SessionStart
        yield opb.AgentCommand(session_config=opb.SessionConfig(agent="test"))
        yield opb.AgentCommand(user_turn=opb.UserTurn(turn_id="u1", text="where is my order"))
        while context.is_active():
            time.sleep(0.1)


@pytest.fixture(scope="module")
def orchestrator():
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=64))
    orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(OrchestratorDouble(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


class Edges:
    def __init__(self, workdir: pathlib.Path, redis_url: str, orchestrator: str) -> None:
        self.orchestrator = orchestrator
        self.ports = {n: free_port() for n in NAMES}
        self.members = ",".join(f"{n}=127.0.0.1:{p}" for n, p in self.ports.items())
        self.workdir = workdir
        self.redis_url = redis_url
        self.procs: dict[str, subprocess.Popen] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, name: str) -> None:
        env = {
            **os.environ, "PYTHONUNBUFFERED": "1",
            "VOXMESH_EDGE_PORT": str(self.ports[name]), "VOXMESH_EDGE_POD_NAME": name,
            "VOXMESH_EDGE_MEMBERSHIP": "static", "VOXMESH_EDGE_MEMBERS": self.members,
            "VOXMESH_EDGE_REDIS_URL": self.redis_url,
            "VOXMESH_EDGE_STT_TARGET": "127.0.0.1:1", "VOXMESH_EDGE_TTS_TARGET": "127.0.0.1:1",
            "VOXMESH_EDGE_ORCHESTRATOR_TARGET": self.orchestrator, "VOXMESH_EDGE_TOKEN_SECRET": SECRET,
            # Long enough that a draining edge keeps its session for the whole test.
            "VOXMESH_EDGE_DRAIN_GRACE_S": "120",
            "VOXMESH_EDGE_OWNER_REFRESH_S": "1",
        }
        log = open(self.workdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "voxmesh_edge"], env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)

    def logs(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def edges(tmp_path_factory, orchestrator):
    workdir = tmp_path_factory.mktemp("edges")
    with redis_server(workdir / "redis", appendonly=False) as url:
        e = Edges(workdir, url, orchestrator)
        try:
            for name in NAMES:
                e.start(name)
            for name in NAMES:
                wait_for_port(e.ports[name], timeout=60, proc=e.procs[name])
            yield e
        except Exception:
            for name in NAMES:
                print(f"--- {name} ---\n{e.logs(name)}")
            raise
        finally:
            e.stop()


@pytest.fixture
async def http(edges):
    # Every test starts from an empty owner table (no leftover loads).
    r = aioredis.from_url(edges.redis_url, decode_responses=True)
    await r.flushdb()
    await r.aclose()
    async with aiohttp.ClientSession() as s:
        yield s


class Client:
    """A real aiortc caller; `connect` completes ICE/DTLS with the answer."""

    def __init__(self) -> None:
        configure_ice_hosts(("127.0.0.1",))
        self.pc = RTCPeerConnection()
        self.pc.addTrack(AudioStreamTrack())
        self.pc.createDataChannel("events")

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def connect(self, answer: str, timeout: float = 20) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        for _ in range(int(timeout * 10)):
            if self.pc.connectionState == "connected":
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"connection state {self.pc.connectionState}")


TOKENS: dict[str, str] = {}


async def create(http, edges, via: str, sdp: str, **headers) -> tuple[int, str, str, str]:
    """POST an offer to edge `via`; (status, session id, served-by, answer).
    Keeps each session's resume token, and records its conversation in Redis
    (what the orchestrator does for a live conversation) so it can be resumed."""
    async with http.post(f"{edges.url(via)}/v1/sessions", data=sdp, headers={"Content-Type": "application/sdp", **headers}) as r:
        body = await r.text()
        sid = r.headers.get("X-Voxmesh-Session", "")
        if r.status == 201:
            TOKENS[sid] = r.headers["X-Voxmesh-Resume-Token"]
            red = aioredis.from_url(edges.redis_url, decode_responses=True)
            await red.hset(f"vm:s:{sid}:meta", "agent", "test")
            await red.aclose()
        return r.status, sid, r.headers.get("X-Voxmesh-Edge", ""), body


async def sessions_on(http, edges) -> dict[str, int]:
    out = {}
    for name in edges.procs:
        if edges.procs[name].poll() is None:
            async with http.get(f"{edges.url(name)}/readyz") as r:
                out[name] = (await r.json())["sessions"]
    return out


async def delete_all(http, edges, sids) -> None:
    for sid in sids:
        async with http.delete(f"{edges.url('edge-0')}/v1/sessions/{sid}") as r:
            await r.read()


async def test_new_sessions_spread_evenly_over_the_edges(edges, http):
    client = Client()
    sdp = await client.offer()  # an offer may be answered many times; ICE never completes here
    served = collections.Counter()
    sids = []
    for i in range(12):
        # All posted to one edge, as a sticky load balancer might.
        status, sid, by, answer = await create(http, edges, "edge-0", sdp)
        assert status == 201, answer
        assert "a=candidate" in answer
        served[by] += 1
        sids.append(sid)
    # Bounded-load placement over live loads: never more than ceil(mean) per edge.
    assert served == {"edge-0": 4, "edge-1": 4, "edge-2": 4}
    assert await sessions_on(http, edges) == {"edge-0": 4, "edge-1": 4, "edge-2": 4}
    r = aioredis.from_url(edges.redis_url, decode_responses=True)
    try:
        owners = {sid: await r.get(f"vm:s:{sid}:owner") for sid in sids}
    finally:
        await r.aclose()
    assert collections.Counter(owners.values()) == served
    await delete_all(http, edges, sids)
    await client.pc.close()
    assert await sessions_on(http, edges) == {"edge-0": 0, "edge-1": 0, "edge-2": 0}


async def test_offer_delete_and_reconnect_on_the_wrong_edge_reach_the_owner(edges, http):
    client = Client()
    sdp = await client.offer()
    status, sid, owner, answer = await create(http, edges, "edge-1", sdp)
    assert status == 201
    await client.connect(answer)
    others = [n for n in NAMES if n != owner]
    # A per-session call on a non-owner is answered by the owner.
    async with http.get(f"{edges.url(others[0])}/v1/sessions/{sid}/history") as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Voxmesh-Edge"] == owner
    # A reconnect (a new offer that names the session) on a non-owner: the owner
    # answers it, on the same session, and the new PeerConnection works.
    again = Client()
    forged = TOKENS[sid].rsplit(".", 1)[0] + ".AAAAAAAAAAAAAAAAAAAAAA"
    status, _, _, body = await create(http, edges, others[1], await again.offer(), **{"X-Voxmesh-Resume": forged})
    assert status == 403, body  # a foreign token moves nothing
    status, sid2, by, answer2 = await create(http, edges, others[1], await again.offer(), **{"X-Voxmesh-Resume": TOKENS[sid]})
    assert (status, sid2, by) == (201, sid, owner), answer2
    await again.connect(answer2)
    assert (await sessions_on(http, edges))[owner] == 1
    # DELETE on a non-owner ends it on the owner.
    async with http.delete(f"{edges.url(others[0])}/v1/sessions/{sid}") as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Voxmesh-Edge"] == owner
    assert await sessions_on(http, edges) == {n: 0 for n in NAMES}
    r = aioredis.from_url(edges.redis_url, decode_responses=True)
    try:
        assert await r.get(f"vm:s:{sid}:owner") is None  # released when the session ended
    finally:
        await r.aclose()
    async with http.delete(f"{edges.url(others[1])}/v1/sessions/{sid}") as r:
        assert r.status == 404
    # Posing as a peer to create a "new" session under a stored conversation's id
    # is refused (only its resume token reattaches it).
    poser = Client()
    status, _, _, body = await create(http, edges, "edge-0", await poser.offer(),
                                      **{"X-Voxmesh-Forwarded-By": "edge-9", "X-Voxmesh-Place-Session": sid})
    assert status == 409, body
    await poser.pc.close()
    # An offer posted to a non-owner is forwarded too: with one session live on
    # edge-X, the next one goes elsewhere whichever edge receives it.
    c3 = Client()
    status, sid3, first, _ = await create(http, edges, "edge-0", await c3.offer())
    status, sid4, second, _ = await create(http, edges, first, await c3.offer())
    assert status == 201 and second != first
    await delete_all(http, edges, [sid3, sid4])
    for c in (client, again, c3):
        await c.pc.close()


async def test_a_draining_edge_takes_no_new_sessions_and_keeps_its_live_one(edges, http):
    # Put one live session on edge-2 (place sessions until one lands there).
    client, sids, live = None, [], None
    for _ in range(6):
        c = Client()
        status, sid, by, answer = await create(http, edges, "edge-0", await c.offer())
        assert status == 201
        if by == "edge-2" and live is None:
            await c.connect(answer)
            client, live = c, sid
        else:
            sids.append(sid)
            await c.pc.close()
    assert live is not None
    await delete_all(http, edges, sids)
    async with http.post(f"{edges.url('edge-2')}/v1/admin/drain") as r:
        assert r.status == 200
    async with http.get(f"{edges.url('edge-2')}/readyz") as r:
        assert r.status == 200 and (await r.json())["draining"] is True
    # New sessions, whichever edge they are posted to (the draining one too), go elsewhere.
    offerer = Client()
    sdp = await offerer.offer()
    new = []
    for via in ("edge-2", "edge-0", "edge-1", "edge-2", "edge-2", "edge-0"):
        status, sid, by, _ = await create(http, edges, via, sdp)
        assert status == 201 and by in ("edge-0", "edge-1"), (via, by)
        new.append(sid)
    # The live session is still there, still connected, and still reachable.
    await asyncio.sleep(1.0)
    assert client.pc.connectionState == "connected"
    assert (await sessions_on(http, edges))["edge-2"] == 1
    async with http.get(f"{edges.url('edge-1')}/v1/sessions/{live}/history") as r:
        assert r.status == 200 and r.headers["X-Voxmesh-Edge"] == "edge-2"
    # A reconnect of that session (the client moving, or its connection failing)
    # does not go back to the draining edge: another edge takes the session over,
    # and the draining edge lets its old connection go once its lease is lost.
    again = Client()
    status, sid2, by, answer2 = await create(http, edges, "edge-2", await again.offer(), **{"X-Voxmesh-Resume": TOKENS[live]})
    assert status == 201 and sid2 == live and by in ("edge-0", "edge-1"), (status, by, answer2)
    await again.connect(answer2)
    for _ in range(50):
        if (await sessions_on(http, edges))["edge-2"] == 0:
            break
        await asyncio.sleep(0.1)
    assert (await sessions_on(http, edges))["edge-2"] == 0
    async with http.delete(f"{edges.url('edge-2')}/v1/sessions/{live}") as r:
        assert r.status == 200 and r.headers["X-Voxmesh-Edge"] == by
    await delete_all(http, edges, new)
    await client.pc.close()
    await again.pc.close()
    await offerer.pc.close()
    # Leave edge-2 as the next test expects it: restarted, not draining.
    edges.procs["edge-2"].kill()
    edges.procs["edge-2"].wait(10)
    r = aioredis.from_url(edges.redis_url, decode_responses=True)
    await r.delete("vm:m:edge-2:draining")
    await r.aclose()
    edges.start("edge-2")
    wait_for_port(edges.ports["edge-2"], timeout=60, proc=edges.procs["edge-2"])


async def test_a_reconnect_for_a_dead_edges_session_is_taken_over(edges, http):
    client = Client()
    status, sid, owner, answer = await create(http, edges, "edge-0", await client.offer())
    while owner == "edge-0":  # the owner must not be the edge we reconnect through
        status, sid, owner, answer = await create(http, edges, "edge-0", await client.offer())
    edges.procs[owner].send_signal(signal.SIGKILL)
    edges.procs[owner].wait(10)
    again = Client()
    status, sid2, by, answer2 = await create(http, edges, "edge-0", await again.offer(), **{"X-Voxmesh-Resume": TOKENS[sid]})
    assert status == 201 and sid2 == sid and by != owner, answer2
    await again.connect(answer2)
    r = aioredis.from_url(edges.redis_url, decode_responses=True)
    try:
        assert await r.get(f"vm:s:{sid}:owner") == by
    finally:
        await r.aclose()
    # The dead edge is now suspect: new sessions skip it without waiting for it.
    status, _, by3, _ = await create(http, edges, "edge-0", await Client().offer())
    assert status == 201 and by3 != owner
    async with http.delete(f"{edges.url('edge-0')}/v1/sessions/{sid}") as resp:
        assert resp.status == 200 and resp.headers["X-Voxmesh-Edge"] == by
    await client.pc.close()
    await again.pc.close()
    edges.start(owner)
    wait_for_port(edges.ports[owner], timeout=60, proc=edges.procs[owner])
