"""SIGKILL the orchestrator replica that serves a conversation, mid-reply and
mid-user-turn: the edge's Converse stream reconnects to the other replica,
which takes the session over from Redis; the conversation goes on, its
history is complete, and no turn is answered twice."""

from __future__ import annotations

import signal
import time

import pytest

from faultlib import assert_no_duplicate_clauses
from voxmesh.testing.speech import ORDER_QUESTION

pytestmark = pytest.mark.fault


def _kill_on(cluster, killed: list, when):
    """A call hook that SIGKILLs the serving orchestrator at the first event matching `when`."""
    sid: list[str] = []

    def hook(ev: dict) -> None:
        if ev["type"] == "session" and not sid:
            sid.append(ev["session_id"])
        if not killed and sid and when(ev):
            name = cluster.serving_orchestrator(sid[0])
            cluster.stack.kill(name)
            killed.append((name, time.monotonic()))

    return hook


def test_killed_mid_reply_the_reply_is_finished_once_and_the_call_goes_on(cluster):
    order = cluster.speech(ORDER_QUESTION, "order")
    follow = cluster.speech("Thank you very much", "thanks")
    killed: list = []
    try:
        result = cluster.call(order, then=[follow], on_event=_kill_on(cluster, killed, lambda e: e["type"] == "agent_say"))
        print({k: result[k] for k in ("user_transcript", "agent_text", "turns", "completed")})
        assert killed, "the kill never happened"
        assert result["completed"], cluster.logs()
        sid = result["session_id"]
        history = cluster.history(sid)
        print("history:", [(m["role"], m["content"]) for m in history])
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert "out for delivery" in history[1]["content"]
        assert len({m["turn_id"] for m in history}) == 4
        assert_no_duplicate_clauses(result)
        # what the client was told the agent said for turn 1 is exactly what history holds
        a1 = history[1]["turn_id"]
        said = " ".join(e["text"] for e in sorted((e for e in result["events"] if e["type"] == "agent_say" and e["turn_id"] == a1),
                                                 key=lambda e: e["clause_id"]))
        assert said == history[1]["content"]
        assert cluster.serving_orchestrator(sid) != killed[0][0]
        assert any(e["type"] == "recovered" and e["component"] == "orchestrator" for e in result["events"])
    finally:
        cluster.restore(*(k[0] for k in killed))


def test_killed_mid_user_turn_the_turn_is_answered_once(cluster):
    order = cluster.speech(ORDER_QUESTION, "order")
    killed: list = []
    try:
        result = cluster.call(order, on_event=_kill_on(cluster, killed, lambda e: e["type"] in ("speech_started", "interim")))
        print({k: result[k] for k in ("user_transcript", "agent_text", "turns", "completed")})
        assert killed and result["completed"], cluster.logs()
        history = cluster.history(result["session_id"])
        print("history:", [(m["role"], m["content"]) for m in history])
        assert [m["role"] for m in history] == ["user", "assistant"]
        assert "out for delivery" in history[1]["content"]
        assert len(result["turns"]) == 1
        assert_no_duplicate_clauses(result)
    finally:
        cluster.restore(*(k[0] for k in killed))


def test_sigterm_hands_the_session_to_the_other_replica_between_turns(cluster):
    """A draining orchestrator ends each stream as soon as its conversation is
    idle (UNAVAILABLE "draining"); the edge reconnects to the other replica at
    once, and the next turn is answered there."""
    order = cluster.speech(ORDER_QUESTION, "order")
    follow = cluster.speech("Thank you very much", "thanks")
    stopped: list = []

    def hook(ev: dict) -> None:
        if ev["type"] == "reply_done" and not stopped:
            sid = [e for e in events if e["type"] == "session"][0]["session_id"]
            name = cluster.serving_orchestrator(sid)
            cluster.stack.procs[name].popen.send_signal(signal.SIGTERM)
            stopped.append((name, time.monotonic(), sid))

    events: list = []
    try:
        result = cluster.call(order, then=[follow], on_event=lambda ev: (events.append(ev), hook(ev)))
        assert stopped and result["completed"], cluster.logs()
        name, t_stop, sid = stopped[0]
        assert cluster.stack.procs[name].popen.wait(30) == 0  # drained and exited by itself
        history = cluster.history(sid)
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert cluster.serving_orchestrator(sid) != name
        moved = [e for e in result["events"] if e["type"] == "recovered" and e["component"] == "orchestrator"]
        assert moved and moved[0]["t"] - t_stop < 4.0, moved  # handed off at once, not at the 10 s grace deadline
        assert_no_duplicate_clauses(result)
    finally:
        cluster.restore(*(s[0] for s in stopped))
