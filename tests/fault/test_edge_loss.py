"""Edge loss and edge drain. The client holds the resume token from session
creation; when its edge is SIGKILLed, `voxmesh call --reconnect` notices the
dead connection and reattaches to the conversation on the other edge, and the
agent goes on with the whole history. A SIGTERMed edge drains: it moves its
client (between turns) to another edge, so the session is not dropped. A
session's data can be erased with its token, after which the token is stale."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from faultlib import assert_no_duplicate_clauses
from voxmesh.testing.speech import ORDER_QUESTION

pytestmark = pytest.mark.fault


def test_edge_killed_the_client_resumes_on_the_other_edge_with_full_history(cluster):
    order = cluster.speech(ORDER_QUESTION, "order")
    follow = cluster.speech("What was my order number?", "which")
    killed: list = []

    def hook(ev: dict) -> None:
        # The edge that serves the session (the one we posted to may have placed it on its peer).
        if ev["type"] == "reply_done" and ev["conn"] == 0 and not killed:
            name = cluster.edge_proc(ev["edge"])
            cluster.stack.kill(name)
            killed.append((time.monotonic(), name))

    try:
        result = cluster.call(order, urls=cluster.stack.edge_urls, then=[follow], reconnect=True, on_event=hook)
        print({k: result[k] for k in ("user_transcript", "agent_text", "turns", "completed", "reconnects")})
        assert killed and result["completed"], cluster.logs()
        [rc] = result["reconnects"]
        assert rc["reason"] in ("stall", "failed") and cluster.edge_proc(rc["edge"]) != killed[0][1]
        assert rc["session_id"] == result["session_id"]
        print("detected after", round((rc["lost_at"] - killed[0][0]) * 1000), "ms; reattached after", round((rc["connected_at"] - rc["lost_at"]) * 1000), "ms")
        history = cluster.history(result["session_id"])
        print("history:", [(m["role"], m["content"]) for m in history])
        # one conversation: the turn before the loss and the turn after it
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert "out for delivery" in history[1]["content"]
        assert "order" in history[2]["content"].lower()
        # the order number was said only in the first turn: the answer comes from the history
        assert "4 2 1 9" in history[3]["content"] or "4219" in history[3]["content"], history[3]
        assert any(e["type"] == "recovered" and e["component"] == "edge" for e in result["events"])
        # the second turn went through the new connection and was answered there
        assert any(e["type"] == "user_turn" and e["conn"] == 1 for e in result["events"])
        assert any(e["type"] == "session" and e["conn"] == 1 and e["resumed"] for e in result["events"])
        assert result["history"] is not None and len(result["history"]) == 4  # served by the new edge
        assert_no_duplicate_clauses(result)
    finally:
        cluster.restore(*(k[1] for k in killed))


def test_edge_sigterm_moves_the_live_session_and_it_goes_on(cluster):
    """Through the real CLI entry point: SIGTERM the edge once the first reply
    is stored; the edge drains, moves the client between turns, and the
    second turn is answered on the other edge in the same conversation."""
    order = cluster.speech(ORDER_QUESTION, "order")
    follow = cluster.speech("Thank you very much", "thanks")
    first = None
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxmesh_cli", "call", str(order), "--then", str(follow), "--reconnect", "--json",
         "--url", ",".join(cluster.stack.edge_urls), "--timeout", "90"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        sid = None
        while time.monotonic() < deadline and proc.poll() is None:
            for key in cluster.redis.scan_iter("vm:s:*:history"):
                s = key.split(":")[2]
                if s not in seen_before and cluster.redis.llen(key) >= 2:
                    sid = s
            if sid:
                break
            time.sleep(0.1)
        assert sid, "the first turn was never stored"
        first = cluster.edge_proc(cluster.redis.get(f"vm:s:{sid}:owner"))  # the edge holding the session
        cluster.stack.procs[first].popen.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        print({k: result[k] for k in ("user_transcript", "agent_text", "turns", "completed", "reconnects")})
        assert [r["reason"] for r in result["reconnects"]] == ["move"]
        assert result["session_id"] == sid
        history = cluster.history(sid)
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert cluster.stack.procs[first].popen.wait(30) == 0  # drained and exited cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if first:
            cluster.restore(first)


seen_before: set[str] = set()


@pytest.fixture(autouse=True)
def _known_sessions(cluster):
    seen_before.clear()
    seen_before.update(k.split(":")[2] for k in cluster.redis.scan_iter("vm:s:*:history"))


def test_purge_erases_the_conversation_and_makes_its_token_stale(cluster):
    order = cluster.speech(ORDER_QUESTION, "order")
    tokens: list[str] = []
    result = cluster.call(order, on_event=lambda ev: tokens.append(ev["resume_token"]) if ev["type"] == "session" else None)
    sid, token = result["session_id"], tokens[0]
    assert cluster.redis.keys(f"vm:s:{sid}:*")
    edge = cluster.stack.edge_urls[1]  # any edge: the token is the proof, not the edge
    req = urllib.request.Request(f"{edge}/v1/sessions/{sid}?purge=true", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403
    req = urllib.request.Request(f"{edge}/v1/sessions/{sid}?purge=true", method="DELETE", headers={"X-Voxmesh-Resume": token})
    body = json.loads(urllib.request.urlopen(req, timeout=10).read())
    assert body["purged"] and body["deleted_keys"] >= 4
    assert cluster.redis.keys(f"vm:s:{sid}:*") == []
    # resuming the erased conversation is refused
    req = urllib.request.Request(f"{edge}/v1/sessions", data=b"v=0\r\n", method="POST",
                                 headers={"Content-Type": "application/sdp", "X-Voxmesh-Resume": token})
    with pytest.raises(urllib.error.HTTPError) as stale:
        urllib.request.urlopen(req, timeout=10)
    assert stale.value.code == 403 and "no longer exists" in stale.value.read().decode()
