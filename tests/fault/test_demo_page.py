"""The demo page follows its conversation when its edge drains: headless
Chromium (fake microphone from a WAV with two turns) talks to the agent; the
edge holding the session gets SIGTERM after the first reply; the page gets
`move`, reconnects with its resume token, and the second turn is answered in
the same conversation."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

pytestmark = [pytest.mark.fault, pytest.mark.browser]


@pytest.fixture
def page(cluster, tmp_path):
    from voxmesh.testing.webrtc import chromium
    from voxmesh.testing.speech import ORDER_QUESTION, say_to_wav

    # Turn 1 at ~1.5 s; turn 2 ~20 s later, after the first reply and the move.
    a = say_to_wav(ORDER_QUESTION, tmp_path / "a.wav", rate=48000, lead_silence=1.5, tail_silence=20.0)
    b = say_to_wav("Thank you very much", tmp_path / "b.wav", rate=48000, tail_silence=8.0)
    wav = tmp_path / "two-turns.wav"
    subprocess.run(["sox", str(a), str(b), str(wav)], check=True)
    driver = chromium(wav, tmp_path / "profile")
    yield driver
    driver.quit()


def _state(page) -> dict:
    return page.execute_script(
        "return {status: document.querySelector('#status').textContent,"
        " users: [...document.querySelectorAll('.msg.user:not(.interim)')].map(e => e.textContent),"
        " agents: [...document.querySelectorAll('.msg.agent')].map(e => e.textContent),"
        " sid: window.voxmesh.sessionId, reconnects: window.voxmesh.reconnects}"
    )


def test_demo_page_moves_with_its_conversation_when_the_edge_drains(cluster, page):
    page.get(cluster.stack.edge_urls[0] + "/")
    page.find_element("id", "talk").click()
    drained = None
    try:
        deadline = time.monotonic() + 90
        state = _state(page)
        while time.monotonic() < deadline:
            state = _state(page)
            if drained is None and state["agents"] and state["sid"]:
                drained = cluster.edge_proc(cluster.redis.get(f"vm:s:{state['sid']}:owner"))
                cluster.stack.procs[drained].popen.send_signal(signal.SIGTERM)
            if len(state["agents"]) >= 2:
                break
            time.sleep(0.25)
        print("page state:", state)
        assert drained, f"the first reply never came: {state}"
        assert state["reconnects"] == 1, state
        assert len(state["users"]) == 2 and "order" in state["users"][0].lower(), state
        assert len(state["agents"]) == 2, state
        # the second reply is committed once generated (its first words are on the page already)
        until = time.monotonic() + 15
        while len(history := cluster.history(state["sid"])) < 4 and time.monotonic() < until:
            time.sleep(0.2)
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    finally:
        if drained:
            cluster.restore(drained)
