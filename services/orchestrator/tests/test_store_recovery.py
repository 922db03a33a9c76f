"""The reply-in-flight record and the takeover fence, on a real redis-server."""

from __future__ import annotations

import pytest

from voxmesh_orchestrator.store import Superseded, saved_reply




async def test_reply_record_is_per_reply_and_parsed_back(store):
    e = await store.take_over("s", "orchestrator-0")
    await store.begin_reply("s", "a1", epoch=e)
    assert await store.set_reply("s", "a1", {"c:0": "Hello there.", "c:1": "Bye."}, epoch=e)
    assert await store.set_reply("s", "a1", {"h:0": 12, "p:0": 1, "h:1": 2}, epoch=e)
    r = saved_reply(await store.turn_state("s"))
    assert (r.turn_id, r.status, r.clauses, r.played, r.heard) == ("a1", "generating", {0: "Hello there.", 1: "Bye."}, {0}, {0: 12, 1: 2})
    # a write for another reply is ignored; a new reply forgets the old clauses
    assert not await store.set_reply("s", "a0", {"c:5": "stale"}, epoch=e)
    await store.begin_reply("s", "a2", epoch=e)
    r = saved_reply(await store.turn_state("s"))
    assert (r.turn_id, r.clauses, r.played, r.heard) == ("a2", {}, set(), {})
    assert (await store.r.hget("vm:s:s:meta", "orchestrator")) == "orchestrator-0"


async def test_a_replica_that_lost_the_session_cannot_write(store):
    old = await store.take_over("s", "orchestrator-0")
    assert await store.commit_message("s", "u1", {"role": "user", "content": "hi"}, epoch=old, user_turn="u1")
    new = await store.take_over("s", "orchestrator-1")
    assert new > old
    with pytest.raises(Superseded):
        await store.commit_message("s", "a1", {"role": "assistant", "content": "stale"}, epoch=old)
    with pytest.raises(Superseded):
        await store.begin_reply("s", "a1", epoch=old)
    with pytest.raises(Superseded):
        await store.set_reply("s", "a1", {"p:0": 1}, epoch=old)
    assert await store.commit_message("s", "a1", {"role": "assistant", "content": "hello"}, epoch=new)
    assert [m["content"] for m in await store.history("s")] == ["hi", "hello"]
    # erased: the live stream is fenced out too (no epoch left), nothing remains
    assert await store.delete_session("s") >= 4
    with pytest.raises(Superseded):
        await store.commit_message("s", "u2", {"role": "user", "content": "again"}, epoch=new)
    assert await store.r.keys("vm:s:s:*") == []
