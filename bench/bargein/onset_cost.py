"""CPU cost of the edge's barge-in onset detector (voxmesh_edge.onset) per
20 ms inbound frame, on the event loop of the process that runs it:

- while the agent is playing and the caller is quiet or talking (the detector
  runs on every frame), with the echo guard the session gives it;
- an echo check (the correlation made once per burst of energy).

Idle sessions pay only the `playout.is_audible()` check. Figures only.

    python bench/bargein/onset_cost.py
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import numpy as np

from voxmesh.testing.speech import read_pcm16, say_to_wav
from voxmesh_edge.echo import EchoGuard
from voxmesh_edge.onset import OnsetDetector, _declick


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    work = pathlib.Path(tempfile.mkdtemp(prefix="onset-cost-"))
    user, _ = read_pcm16(say_to_wav("No wait, stop, I have another question about my order", work / "u.wav", rate=16000))
    agent, _ = read_pcm16(say_to_wav("Your order is out for delivery and should arrive today", work / "a.wav", rate=48000))
    frames = [user[i : i + 320] for i in range(0, user.size - 320, 320)]
    quiet = [np.zeros(320, np.int16)] * len(frames)
    guard = EchoGuard()
    for i in range(0, 48000, 960):
        guard.played(agent[i : i + 960])
    det = OnsetDetector(guard)
    n = 20000
    talk = per_call_us(lambda i: det.feed(frames[i % len(frames)]), n)
    det = OnsetDetector(guard)
    silent = per_call_us(lambda i: det.feed(quiet[i % len(quiet)]), n)
    mic = user[:1600]
    echo = per_call_us(lambda i: guard.is_echo(_declick(mic)), 500)
    print(f"onset detector per 20 ms frame: caller talking {talk:.1f} us, caller quiet {silent:.1f} us")
    print(f"echo check (once per burst of energy while the agent plays): {echo:.0f} us")
    print(f"-> at most {talk / 20e3 * 100:.3f} % of one core per session while its agent plays")


if __name__ == "__main__":
    main()
