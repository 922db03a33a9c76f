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
