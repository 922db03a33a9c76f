"""End to end barge-in over real WebRTC: the caller talks over the agent's
reply; the agent goes silent at the caller's ear and the stored history holds
only what was heard of the interrupted reply."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_barge_in_silences_the_agent_and_cuts_history(stack):
    question = stack.speech("Can you tell me what you can do for me today?", "q-long")
    stop = stack.speech("Sorry, can I ask you something else", "q-stop", lead_silence=0.0, tail_silence=0.3)
    result = stack.call(question, barge_in=str(stop), barge_in_after_ms=900, timeout=90)
    print("barge-in result:", {k: result[k] for k in ("bargein_stop_ms", "interrupted", "agent_text", "ttfa_ms")})
    assert result["interrupted"], "the reply was not interrupted"
    assert result["bargein_stop_ms"] is not None and result["bargein_stop_ms"] < 1500
    history = result["history"]
    cut = [m for m in history if m["role"] == "assistant" and m.get("interrupted")]
    assert cut, history
    for m in cut:
        heard, generated = m["content"], m.get("generated", "")
        # what was heard is a prefix of what was generated (cut at a word); a
        # reply interrupted before it produced anything has neither
        assert generated.startswith(heard) and (len(heard) < len(generated) or not generated)
    assert any(m["content"] for m in cut), "the first reply was cut after some of it was heard"
    # the barge-in became the next user turn, and every user turn has one answer
    users = [m for m in history if m["role"] == "user"]
    assert len(users) >= 2 and users[-1]["ts"] > cut[0]["ts"] - 5, history
    replies = [m["turn_id"] for m in history if m["role"] == "assistant"]
    assert len(replies) == len(set(replies)) == len(users)
