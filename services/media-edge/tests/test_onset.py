"""Barge-in onset at the edge, on scripted audio in 20 ms frames as the
receiver hands them on: the caller's speech pauses the agent within a few
frames; the agent's own echo, a click and steady background noise do not; a
pause stt never confirms resumes where it stopped."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from voxmesh.testing.speech import read_pcm16, say_to_wav
from voxmesh.v1 import orchestrator_pb2 as opb
from voxmesh_edge.echo import EchoGuard
from voxmesh_edge.onset import OnsetDetector
from voxmesh_edge.playout import Segment
from voxmesh_edge.session import EdgeSession, ReplyAudio
from voxmesh_edge.settings import EdgeSettings

F16 = 320  # 20 ms at 16 kHz
F48 = 960


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    d = tmp_path_factory.mktemp("onset")
    agent, _ = read_pcm16(say_to_wav("Your order is out for delivery and should arrive by five today, is there anything else",
                                     d / "agent.wav", rate=48000))
    user, _ = read_pcm16(say_to_wav("No wait, stop, I have another question", d / "user.wav", rate=16000, voice="en-us+f3"))
    return agent, user


def speech_start(pcm: np.ndarray) -> int:
    """First sample of the first 10 ms window above -40 dBFS (the client's bound)."""
    w = pcm[: pcm.size // 160 * 160].astype(np.float32).reshape(-1, 160)
    return int(np.nonzero(np.sqrt((w**2).mean(axis=1)) > 32768 * 10 ** (-40 / 20))[0][0]) * 160


def frames(pcm: np.ndarray, n: int = F16):
    for i in range(0, pcm.size - n + 1, n):
        yield i // n, pcm[i : i + n]


def feed_all(det: OnsetDetector, mic: np.ndarray) -> list[tuple[int, int]]:
    """(frame index at which feed returned it, onset sample) for every onset."""
    return [(k, o) for k, f in frames(mic) if (o := det.feed(f)) is not None]


def test_speech_gives_one_onset_within_two_frames_at_its_start(voices):
    _, user = voices
    rng = np.random.default_rng(3)
    mic = np.concatenate([np.zeros(8000, np.int16), user]) + rng.integers(-30, 30, 8000 + user.size).astype(np.int16)
    true = 8000 + speech_start(user)
    onsets = feed_all(OnsetDetector(), mic)
    assert onsets, "speech gave no onset"
    k, at = onsets[0]
    assert k <= true // F16 + 2, (k, true // F16)
    assert abs(at - true) <= 480  # within 30 ms of where the speech became loud
    # One onset per burst: words after short gaps give more (the session
    # listens only until the first), never one every frame or two.
    gaps = np.diff([k for k, _ in onsets])
    assert len(onsets) <= 12 and gaps.min() >= 3, onsets


def test_a_click_and_steady_noise_give_none():
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 32768 * 10 ** (-50 / 20), 32000).astype(np.int16)  # -50 dBFS hiss
    mic = noise.copy()
    for at in (4000, 12000, 20000):  # clicks: 2 ms at full scale
        mic[at : at + 32] = 30000
    assert feed_all(OnsetDetector(), mic) == []
    # and the same clicks lengthened to 60 ms (a sustained burst) do fire: the test can fail
    long = noise.copy()
    long[12000:12960] = (20000 * np.sin(np.arange(960) / 3)).astype(np.int16)
    assert len(feed_all(OnsetDetector(), long)) == 1


def test_digital_silence_is_taken_in_one_step_with_the_same_result(voices):
    """The edge hands a DTX caller's gaps on as zeros: the shortcut must leave
    the detector exactly where feeding them window by window would."""

    class WindowByWindow(OnsetDetector):
        skip_digital_silence = False

    speech = voices[1][:16000]  # the user, at 16 kHz
    pieces = [speech[:4800], np.zeros(640, np.int16), np.zeros(320, np.int16), speech[4800:9600],
              np.zeros(6400, np.int16), speech[9600:], np.zeros(640, np.int16), speech[:3200]]
    fast, ref = OnsetDetector(), WindowByWindow()
    got = [fast.feed(p) for p in pieces]
    want = [ref.feed(p) for p in pieces]
    assert got == want and any(o is not None for o in got)
    assert (fast.samples, fast._active, fast._fired, fast._floor_db) == (ref.samples, ref._active, ref._fired, ref._floor_db)
    assert np.array_equal(fast._recent, ref._recent)


def test_the_agents_echo_is_no_onset_but_the_caller_over_it_is(voices):
    agent, user = voices
    guard = EchoGuard()
    plain = OnsetDetector()  # the same audio without the echo check
    det = OnsetDetector(guard)
    rng = np.random.default_rng(5)
    delay = 1600  # 100 ms from playout back to the microphone
    a16 = agent[::3]
    echo = np.concatenate([np.zeros(delay, np.float32), 0.3 * a16[:-delay]])
    echo = (echo + rng.integers(-200, 200, echo.size)).astype(np.int16)
    fired, plain_fired = [], []
    for k, mic in frames(echo):
        guard.played(agent[k * F48 : (k + 1) * F48])
        if det.feed(mic) is not None:
            fired.append(k)
        if plain.feed(mic) is not None:
            plain_fired.append(k)
    assert plain_fired, "the echo is loud enough to be taken for speech without the guard"
    assert fired == [] and det.echo_rejected >= 1
    # Double talk: the caller starts over the same echo -> an onset.
    start = 24000
    mixed = echo.astype(np.int32)
    mixed[start : start + user.size] += user[: max(0, min(user.size, mixed.size - start))]
    mixed = np.clip(mixed, -32768, 32767).astype(np.int16)
    guard = EchoGuard()
    det = OnsetDetector(guard)
    hits = []
    for k, mic in frames(mixed):
        guard.played(agent[k * F48 : (k + 1) * F48])
        if det.feed(mic) is not None:
            hits.append(k)
    first_user = (start + speech_start(user)) // F16
    assert any(first_user <= k <= first_user + 6 for k in hits), (hits, first_user)


# -- in the session: the playout stops, resumes, hands over to stt ------------


def playing_session(agent: np.ndarray, confirm_ms: int = 150) -> EdgeSession:
    s = EdgeSession("s-onset", EdgeSettings(local_onset_confirm_ms=confirm_ms), upstreams=None)
    text = "Your order is out for delivery"
    s.replies["a1"] = ReplyAudio("a1")
    s.replies["a1"].clauses[0] = text
    s.playout.enqueue(Segment("a1", 0, agent.copy(), (0, len(text)), [], text, True))
    return s


def tick(s: EdgeSession, mic: np.ndarray) -> np.ndarray:
    """One 20 ms tick: the agent frame goes out, the caller's frame comes in."""
    out = s.playout.next_frame()
    s.playout.on_output(out)
    s._listen_for_bargein(mic)
    return out


def client_events(s: EdgeSession) -> list[dict]:
    return [json.loads(t) for t in s._channel_backlog]


async def test_the_caller_pauses_the_agent_within_three_frames_and_it_resumes_unconfirmed(voices):
    agent, user = voices
    s = playing_session(agent)
    mic = np.concatenate([np.zeros(16000, np.int16), user])
    onset_frame = (16000 + speech_start(user)) // F16
    outs = [tick(s, f) for _, f in frames(mic[: (onset_frame + 6) * F16])]
    assert all(o.any() for o in outs[:onset_frame])  # the agent played until the caller spoke
    silent = next(i for i, o in enumerate(outs) if i > onset_frame - 1 and not o.any())
    # detected by the frame after the onset, faded out in the next tick, silent in the one after
    assert silent <= onset_frame + 3, (silent, onset_frame)
    assert s.playout.paused and s._local_pause is not None
    stop = [e for e in client_events(s) if e["type"] == "bargein_stop"]
    assert len(stop) == 1 and 0 <= stop[0]["ms"] <= 200
    pos = s.playout._queue[0].pos
    # stt never reports speech (it took it for noise): play on from the same place
    await asyncio.sleep(0.25)
    assert not s.playout.paused and s._local_pause is None
    assert s.playout._queue[0].pos == pos
    assert s.playout.next_frame().any()
    await s.pc.close()


async def test_stt_speech_started_takes_the_local_pause_over(voices):
    agent, user = voices
    s = playing_session(agent, confirm_ms=100)
    mic = np.concatenate([np.zeros(8000, np.int16), user[: 16000]])
    for _, f in frames(mic):
        tick(s, f)
    assert s._local_pause is not None
    s._turn_open = 1
    s._on_speech_started(onset_ms=600)
    events = [s.to_orchestrator.get_nowait() for _ in range(s.to_orchestrator.qsize())]
    paused = [e.paused for e in events if e.WhichOneof("event") == "paused"]
    assert len(paused) == 1 and paused[0].turn_id == "a1"
    await asyncio.sleep(0.2)
    assert s.playout.paused, "the orchestrator decides now, not the edge's timer"
    # The orchestrator resumes: the edge plays on and listens again
    await s._on_command(opb.AgentCommand(resume=opb.Resume(turn_id="a1")))
    assert not s.playout.paused
    await s.pc.close()


async def test_echo_and_clicks_never_pause_the_agent(voices):
    agent, _ = voices
    s = playing_session(agent)
    rng = np.random.default_rng(6)
    delay = 1600
    played16: list[np.ndarray] = []
    n = agent.size // F48 - 10
    for k in range(n):
        out = s.playout.next_frame()
        s.playout.on_output(out)
        played16.append(out[::3])
        heard = np.concatenate(played16)[-delay - F16 : -delay] if len(played16) * F16 > delay + F16 else np.zeros(F16)
        mic = (0.3 * heard + rng.integers(-200, 200, F16)).astype(np.int16)
        if k % 25 == 7:
            mic[100:132] = 30000  # a click every half second
        s._listen_for_bargein(mic)
        assert not s.playout.paused, f"paused at frame {k}"
    assert s.onset.echo_rejected >= 1  # the echo was loud enough to be judged
    await s.pc.close()


def test_no_echo_check_for_an_onset_that_would_be_ignored(voices):
    """The echo check (~1 ms) runs only when the session would act on the
    onset (`wanted`): with a local pause pending or a user turn open, the
    onset is reported unchecked (the session ignores it anyway)."""
    class CountingGuard(EchoGuard):
        calls = 0

        def is_echo(self, mic16):
            CountingGuard.calls += 1
            return super().is_echo(mic16)

    _, user = voices
    mic = np.concatenate([np.zeros(8000, np.int16), user])
    for wanted in (False, True):
        CountingGuard.calls = 0
        det = OnsetDetector(CountingGuard())
        det.wanted = lambda w=wanted: w
        onsets = feed_all(det, mic)
        assert onsets
        assert CountingGuard.calls == (len(onsets) if wanted else 0)
