"""SessionStore against a real redis-server: atomic, idempotent turn commits,
the heard cut, tool results, deletion."""

from __future__ import annotations






async def test_commit_is_idempotent_by_turn_id(store):
    assert await store.commit_message("s", "u1", {"role": "user", "content": "hi"}, state="thinking", user_turn="u1")
    assert not await store.commit_message("s", "u1", {"role": "user", "content": "hi"}, state="thinking")
    assert await store.commit_message("s", "a1", {"role": "assistant", "content": "hello"})
    hist = await store.history("s")
    assert [(m["role"], m["content"], m["turn_id"]) for m in hist] == [("user", "hi", "u1"), ("assistant", "hello", "a1")]
    assert (await store.turn_state("s"))["user_turn"] == "u1"
    assert 0 < await store.r.ttl("vm:s:s:history") <= 60


async def test_cut_assistant_to_heard_text(store):
    await store.commit_message("s", "a1", {"role": "assistant", "content": "Your order is out for delivery."})
    assert await store.cut_assistant("s", "a1", "Your order")
    hist = await store.history("s")
    assert hist[0]["content"] == "Your order" and hist[0]["interrupted"] is True
    assert not await store.cut_assistant("s", "a9", "x")


async def test_tool_results_and_delete(store):
    await store.save_tool_result("s", "k", {"status": "ok"})
    assert await store.tool_result("s", "k") == {"status": "ok"}
    await store.ensure_session("s", "support")
    assert await store.delete_session("s") >= 2
    assert await store.history("s") == [] and await store.tool_result("s", "k") is None
