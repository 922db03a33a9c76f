"""WHIP signaling with bad input: clear 4xx answers, and the edge keeps
serving other sessions. Uses the real aiohttp app and a real aiortc client
offer; the upstream services are not needed to answer an offer."""

from __future__ import annotations

import pytest

from voxmesh.testing.webrtc import client_offer as real_offer
from aiohttp.test_utils import TestClient, TestServer

from voxmesh_edge.app import Edge
from voxmesh_edge.settings import EdgeSettings


@pytest.fixture
async def client():
    edge = Edge(EdgeSettings(max_sdp_bytes=16 * 1024, stt_target="127.0.0.1:1", tts_target="127.0.0.1:1", orchestrator_target="127.0.0.1:1"))
    async with TestClient(TestServer(edge.app())) as c:
        c.edge = edge
        yield c




async def test_bad_requests_get_clear_errors_and_the_edge_keeps_serving(client):
    r = await client.post("/v1/sessions", data="v=0\r\n", headers={"Content-Type": "application/json"})
    assert r.status == 415 and "application/sdp" in (await r.json())["error"]
    r = await client.post("/v1/sessions", data="x" * 20000, headers={"Content-Type": "application/sdp"})
    assert r.status == 413
    r = await client.post("/v1/sessions", data="hello, I am not SDP", headers={"Content-Type": "application/sdp"})
    assert r.status == 400 and "SDP" in (await r.json())["error"]
    r = await client.post("/v1/sessions", data="v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF xx\r\n", headers={"Content-Type": "application/sdp"})
    assert r.status == 400
    r = await client.post("/v1/sessions", data="v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", headers={"Content-Type": "application/sdp"})
    assert r.status == 400 and "audio" in (await r.json())["error"]
    r = await client.delete("/v1/sessions/nope")
    assert r.status == 404
    # a good offer still works after all that
    pc, sdp = await real_offer()
    r = await client.post("/v1/sessions", data=sdp, headers={"Content-Type": "application/sdp"})
    assert r.status == 201, await r.text()
    assert r.headers["Location"].startswith("/v1/sessions/")
    answer = await r.text()
    assert answer.startswith("v=0") and "a=candidate" in answer and "127.0.0.1" in answer
    assert len(client.edge.sessions) == 1
    r = await client.delete(r.headers["Location"])
    assert r.status == 200 and not client.edge.sessions
    await pc.close()
    metrics = await (await client.get("/metrics")).text()
    assert 'voxmesh_http_requests_total{code="415",route="POST /v1/sessions"} 1.0' in metrics


async def test_draining_edge_stays_routable_and_takes_no_new_sessions(client):
    assert (await client.get("/readyz")).status == 200
    client.edge.settings = EdgeSettings(drain_grace_s=0.1)
    await client.post("/v1/admin/drain")
    # Still ready-for-routing (peers forward its live sessions' signaling to it:
    # a terminating+serving endpoint is a draining member), but it says it drains.
    r = await client.get("/readyz")
    assert r.status == 200 and (await r.json())["draining"] is True
    pc, sdp = await real_offer()
    r = await client.post("/v1/sessions", data=sdp, headers={"Content-Type": "application/sdp"})
    assert r.status == 503
    await pc.close()
