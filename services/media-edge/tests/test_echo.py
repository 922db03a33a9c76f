"""Echo guard on real speech: the agent's own voice coming back (delayed,
attenuated, noisy) is recognized; a different talker is not."""

import numpy as np

from voxmesh.testing.speech import read_pcm16, say_to_wav
from voxmesh_edge.echo import EchoGuard


def test_echo_is_recognized_and_a_user_is_not(tmp_path):
    agent, _ = read_pcm16(say_to_wav("Your order is out for delivery and should arrive today", tmp_path / "a.wav", rate=48000))
    user, _ = read_pcm16(say_to_wav("No wait, stop, I have a question", tmp_path / "u.wav", rate=16000, voice="en-us+f3"))
    guard = EchoGuard()
    assert not guard.recently_audible()
    for i in range(0, 48000, 960):
        guard.played(agent[i : i + 960])
    a16 = agent[::3]
    rng = np.random.default_rng(1)
    echo = (0.3 * a16[16000 - 2400 - 4000 : 16000 - 2400]).astype(np.int16) + rng.integers(-300, 300, 4000).astype(np.int16)
    assert guard.is_echo(echo)
    assert not guard.is_echo(user[3000:7000])
    silent = EchoGuard()
    assert not silent.is_echo(echo)  # nothing was played: nothing can echo


def test_a_pause_in_the_playout_does_not_make_everything_echo(tmp_path):
    """A stretch of digital silence in what was played (a barge-in pause, the
    quiet before a reply) once made every later onset "echo" (float32 FFT
    noise divided by a silent window's energy gave similarities of 30-100)."""
    agent, _ = read_pcm16(say_to_wav("Your order is out for delivery and should arrive today", tmp_path / "a.wav", rate=48000))
    user, _ = read_pcm16(say_to_wav("No wait, stop, I have another question", tmp_path / "u.wav", rate=16000, voice="en-us+f3"))
    guard = EchoGuard()
    for i in range(0, 48000, 960):
        guard.played(agent[i : i + 960])
    for _ in range(50):  # paused for a second
        guard.played(np.zeros(960, np.int16))
    for i in range(48000, 48000 + 960 * 8, 960):  # resumed 160 ms ago
        guard.played(agent[i : i + 960])
    sims = [guard.similarity(user[s : s + 8000]) for s in range(0, user.size - 8000, 1600)]
    assert max(sims) < guard.threshold, sims
    a16 = agent[::3]
    assert guard.is_echo((0.3 * a16[16000 + 2560 - 2400 - 1600 : 16000 + 2560 - 1600]).astype(np.int16))
