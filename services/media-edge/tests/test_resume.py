"""Resume tokens: a client reattaches to its conversation on any edge with the
token; a foreign or stale token is refused with a reason. Real aiohttp app,
real aiortc offers, real redis-server; no upstream services are needed to
answer an offer."""

from __future__ import annotations

import time

import pytest

from voxmesh.testing.webrtc import client_offer as offer
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from voxmesh.testing.servers import redis_server
from voxmesh_edge import resume
from voxmesh_edge.app import Edge
from voxmesh_edge.settings import EdgeSettings

SECRET = "s3cret"


def test_tokens_name_their_session_and_only_verify_with_the_secret():
    tok = resume.issue(SECRET, "abc123", ttl_s=60)
    assert tok.startswith("abc123.") and resume.verify(SECRET, tok) == "abc123"
    with pytest.raises(resume.TokenRefused, match="foreign"):
        resume.verify("other", tok)
    sid, exp, mac = tok.split(".")
    with pytest.raises(resume.TokenRefused, match="foreign"):
        resume.verify(SECRET, f"abc124.{exp}.{mac}")  # edited to name another session
    with pytest.raises(resume.TokenRefused, match="foreign"):
        resume.verify(SECRET, "garbage")
    old = resume.issue(SECRET, "abc123", ttl_s=60, now=time.time() - 120)
    with pytest.raises(resume.TokenRefused, match="stale"):
        resume.verify(SECRET, old)


@pytest.fixture
async def edge(tmp_path):
    with redis_server(tmp_path / "redis") as url:
        settings = EdgeSettings(stt_target="127.0.0.1:1", tts_target="127.0.0.1:1", orchestrator_target="127.0.0.1:1",
                                redis_url=url, token_secret=SECRET)
        e = Edge(settings)
        async with TestClient(TestServer(e.app())) as c:
            c.edge = e
            c.redis = aioredis.from_url(url, decode_responses=True)
            yield c
            await c.redis.aclose()




async def test_resume_reattaches_to_the_same_conversation_and_refuses_foreign_or_stale_tokens(edge):
    pcs = []
    try:
        pc, sdp = await offer()
        pcs.append(pc)
        r = await edge.post("/v1/sessions", data=sdp, headers={"Content-Type": "application/sdp"})
        assert r.status == 201, await r.text()
        sid = r.headers["X-Voxmesh-Session"]
        token = r.headers[resume.RESPONSE_HEADER]
        assert resume.verify(SECRET, token) == sid
        assert not edge.edge.sessions[sid].resumed

        # the conversation exists once the orchestrator has stored it
        await edge.redis.hset(f"vm:s:{sid}:meta", "agent", "support")
        pc2, sdp2 = await offer()
        pcs.append(pc2)
        r = await edge.post("/v1/sessions", data=sdp2, headers={"Content-Type": "application/sdp", resume.REQUEST_HEADER: token})
        assert r.status == 201, await r.text()
        assert r.headers["X-Voxmesh-Session"] == sid and r.headers["Location"] == f"/v1/sessions/{sid}"
        assert edge.edge.sessions[sid].resumed

        forged = resume.issue("not-our-secret", sid, 60)
        r = await edge.post("/v1/sessions", data=sdp2, headers={"Content-Type": "application/sdp", resume.REQUEST_HEADER: forged})
        assert r.status == 403 and "foreign" in (await r.json())["error"]

        expired = resume.issue(SECRET, sid, 60, now=time.time() - 3600)
        r = await edge.post("/v1/sessions", data=sdp2, headers={"Content-Type": "application/sdp", resume.REQUEST_HEADER: expired})
        assert r.status == 403 and "stale" in (await r.json())["error"]

        gone = resume.issue(SECRET, "0" * 32, 60)  # well signed, but the conversation was erased or expired
        r = await edge.post("/v1/sessions", data=sdp2, headers={"Content-Type": "application/sdp", resume.REQUEST_HEADER: gone})
        assert r.status == 403 and "no longer exists" in (await r.json())["error"]

        r = await edge.delete(f"/v1/sessions/{sid}?purge=true")
        assert r.status == 403  # a session id alone cannot erase a conversation
        r = await edge.delete(f"/v1/sessions/{sid}?purge=true", headers={resume.REQUEST_HEADER: resume.issue(SECRET, "x" * 8, 60)})
        assert r.status == 403 and "another session" in (await r.json())["error"]
    finally:
        for pc in pcs:
            await pc.close()
