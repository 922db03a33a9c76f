"""SIGKILL the stt replica transcribing an utterance, mid-utterance: the edge
opens a stream on the other replica and replays the kept audio of the turn, so
the utterance is transcribed in full and answered. Kill Redis (SIGKILL, then
restart on its AOF): committed turns survive and the conversation goes on."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from faultlib import assert_no_duplicate_clauses
from voxmesh.testing.speech import ORDER_QUESTION

pytestmark = pytest.mark.fault


def test_stt_killed_mid_utterance_the_utterance_is_transcribed_whole(cluster):
    order = cluster.speech(ORDER_QUESTION, "order")
    killed: list = []

    def hook(ev: dict) -> None:
        # The first interim: the user is mid-sentence and stt has heard part of it.
        if ev["type"] == "interim" and not killed:
            name = cluster.serving_stt()
            cluster.stack.kill(name)
            killed.append((name, time.monotonic(), ev["text"]))

    try:
        result = cluster.call(order, on_event=hook)
        print({k: result[k] for k in ("user_transcript", "agent_text", "turns", "completed")}, "killed after:", killed)
        assert killed and result["completed"], cluster.logs()
        assert len(result["turns"]) == 1
        said = result["turns"][0]["user"].lower()
        assert "order" in said and "where" in said, said
        # the digits came after the kill: the answer proves they were heard
        history = cluster.history(result["session_id"])
        assert [m["role"] for m in history] == ["user", "assistant"]
        assert "out for delivery" in history[1]["content"], history
        assert any(e["type"] == "recovered" and e["component"] == "stt" for e in result["events"])
        assert_no_duplicate_clauses(result)
    finally:
        cluster.restore(*(k[0] for k in killed))


def test_redis_killed_and_restarted_committed_turns_survive(cluster):
    order = cluster.speech(ORDER_QUESTION, "order")
    follow = cluster.speech("Thank you very much", "thanks")
    done: list = []

    async def hook(ev: dict) -> None:
        if ev["type"] == "reply_done" and not done:
            done.append(ev["turn_id"])
            await asyncio.sleep(1.2)  # appendfsync everysec: the turn is on disk now
            cluster.stack.kill("redis", signal.SIGKILL)
            cluster.stack.restart("redis")
            done.append(time.monotonic())

    result = cluster.call(order, then=[follow], gap_s=3.0, on_event=hook)
    print({k: result[k] for k in ("user_transcript", "agent_text", "turns", "completed")})
    assert len(done) == 2, "Redis was not restarted"
    assert result["completed"], cluster.logs()
    history = cluster.history(result["session_id"])
    print("history:", [(m["role"], m["content"]) for m in history])
    # turn 1 came back from the AOF; turn 2 was committed after the restart
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert "out for delivery" in history[1]["content"]
    assert history[2]["content"].lower().startswith("thank you")
