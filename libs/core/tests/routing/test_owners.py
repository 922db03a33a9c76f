"""Session owner records against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from voxmesh.core.routing.owners import SessionOwners
from voxmesh.core.routing.ring import Ring


@pytest.fixture
def owners(redis: aioredis.Redis) -> SessionOwners:
    return SessionOwners(redis, ttl_s=30)


async def test_first_claim_wins_and_later_claims_learn_the_owner(owners, redis):
    assert await owners.claim("s1", "edge-a") == "edge-a"
    assert await owners.claim("s1", "edge-b") == "edge-a"
    assert await owners.owner_of("s1") == "edge-a"
    assert await redis.get("vm:s:s1:owner") == "edge-a"
    assert 29_000 < await redis.pttl("vm:s:s1:owner") <= 30_000
    assert await owners.owner_of("nope") is None


async def test_concurrent_claims_have_exactly_one_winner(owners):
    results = await asyncio.gather(*(owners.claim("race", f"edge-{i}") for i in range(20)))
    assert len(set(results)) == 1 and results[0] in {f"edge-{i}" for i in range(20)}
    assert await owners.loads([f"edge-{i}" for i in range(20)]) == {f"edge-{i}": int(f"edge-{i}" == results[0]) for i in range(20)}


async def test_reclaim_by_the_owner_is_idempotent_and_extends_the_lease(owners, redis):
    await owners.claim("s1", "edge-a", ttl_s=5)
    assert await owners.claim("s1", "edge-a", ttl_s=20) == "edge-a"
    assert await redis.pttl("vm:s:s1:owner") > 15_000
    assert await owners.loads(["edge-a"]) == {"edge-a": 1}


async def test_refresh_only_extends_the_owners_own_lease(owners, redis):
    await owners.claim("s1", "edge-a", ttl_s=2)
    assert await owners.refresh("s1", "edge-a", ttl_s=30)
    assert await redis.pttl("vm:s:s1:owner") > 25_000
    assert not await owners.refresh("s1", "edge-b")
    assert await redis.pttl("vm:s:s1:owner") > 25_000
    assert not await owners.refresh("gone", "edge-a")


async def test_refresh_many_reports_lost_sessions(owners):
    ids = [f"s{i}" for i in range(1200)]  # more than one script batch
    for s in ids:
        await owners.claim(s, "edge-a")
    await owners.replace("s7", "edge-a", "edge-b")
    res = await owners.refresh_many([*ids, "never"], "edge-a")
    assert [s for s, ok in res.items() if not ok] == ["s7", "never"]
    assert await owners.loads(["edge-a", "edge-b"]) == {"edge-a": 1199, "edge-b": 1}


async def test_release_only_by_the_owner(owners):
    await owners.claim("s1", "edge-a")
    assert not await owners.release("s1", "edge-b")
    assert await owners.owner_of("s1") == "edge-a"
    assert await owners.release("s1", "edge-a")
    assert await owners.owner_of("s1") is None
    assert await owners.loads(["edge-a"]) == {"edge-a": 0}
    assert await owners.claim("s1", "edge-b") == "edge-b"


async def test_expired_lease_frees_the_session_and_the_load(owners):
    # 1 s, not less: the second claim and the first count must land inside it even
    # when a loaded machine stalls this loop.
    await owners.claim("s1", "edge-a", ttl_s=1.0)
    await owners.claim("s2", "edge-a", ttl_s=30)
    assert await owners.loads(["edge-a"]) == {"edge-a": 2}
    await asyncio.sleep(1.2)
    # A crashed member decrements nothing: its entries simply age out.
    assert await owners.loads(["edge-a", "edge-z"]) == {"edge-a": 1, "edge-z": 0}
    assert await owners.claim("s1", "edge-b") == "edge-b"


async def test_replace_takes_over_from_a_gone_owner_once(owners):
    await owners.claim("s1", "edge-a")
    # Two edges race to take over from the dead edge-a: one wins, the other learns it.
    first = await owners.replace("s1", "edge-a", "edge-b")
    second = await owners.replace("s1", "edge-a", "edge-c")
    assert (first, second) == ("edge-b", "edge-b")
    assert await owners.replace("s1", "edge-a", "edge-b") == "edge-b"  # idempotent
    assert await owners.loads(["edge-a", "edge-b", "edge-c"]) == {"edge-a": 0, "edge-b": 1, "edge-c": 0}
    # An expired record can be taken over too.
    assert await owners.replace("s-expired", "edge-a", "edge-c") == "edge-c"


async def test_bytes_client_and_custom_prefix(redis_url):
    client = aioredis.from_url(redis_url)  # no decode_responses: replies are bytes
    try:
        o = SessionOwners(client, prefix="t")
        assert await o.claim("s1", "edge-a") == "edge-a"
        assert await o.claim("s1", "edge-b") == "edge-a"
        assert await o.owner_of("s1") == "edge-a"
        assert await client.exists("t:s:s1:owner", "t:m:edge-a:sessions") == 2
    finally:
        await client.aclose()


async def test_live_sessions_stay_put_when_the_ring_changes(owners):
    # The intended use: place by the ring (bounded by live loads), record, then follow the record.
    ring = Ring([f"edge-{i}" for i in range(5)])
    sessions = [f"sess-{i}" for i in range(200)]
    placed = {}
    for s in sessions:
        loads = await owners.loads(ring.active)
        placed[s] = await owners.claim(s, ring.assign(s, loads))
    assert max((await owners.loads(ring.active)).values()) <= 42  # 1.05 x 40
    grown = ring.add("edge-5", "edge-6").drain("edge-0")
    for s in sessions:
        assert await owners.claim(s, grown.owner(s)) == placed[s]
