"""Playout: pacing-independent behaviour of the queue — heard accounting from
word timings and by proportion, pause/resume without loss, flush with fade."""

import numpy as np

from voxmesh_edge.playout import Playout, Segment

RATE_MS = 48


def tone(ms: int) -> np.ndarray:
    t = np.arange(ms * RATE_MS)
    return (8000 * np.sin(2 * np.pi * 220 * t / 48000)).astype(np.int16)


def make():
    progress, first = [], []
    p = Playout(lambda *a: progress.append(a), first.append, fade_ms=8)
    return p, progress, first


def test_heard_chars_follow_word_timings():
    p, progress, first = make()
    text = "Your order is out for delivery."
    words = [(0, 4, 0, 200), (5, 10, 200, 500), (11, 13, 500, 600), (14, 17, 600, 800), (18, 21, 800, 900), (22, 31, 900, 1300)]
    p.enqueue(Segment("a1", 0, tone(1300), (0, len(text)), words, text, clause_done=True))
    for _ in range(25):  # 500 ms
        p.next_frame()
    assert first == ["a1"]
    assert progress[-1][2] == 10  # "Your order" heard whole at 500 ms
    for _ in range(40):
        p.next_frame()
    assert progress[-1][2:] == (31, 1300, True)


def test_proportional_estimate_cuts_at_a_word_boundary():
    p, progress, _ = make()
    text = "It should arrive before six."
    p.enqueue(Segment("a1", 0, tone(1000), (0, len(text)), [], text, clause_done=True))
    for _ in range(25):  # half the audio: 14 chars -> "It should arri" -> cut to "It should"
        p.next_frame()
    assert text[: progress[-1][2]] == "It should"


def test_pause_then_resume_loses_no_audio():
    p, progress, _ = make()
    pcm = tone(400)
    p.enqueue(Segment("a1", 0, pcm, (0, 5), [], "hello", clause_done=True))
    out = [p.next_frame() for _ in range(5)]
    assert p.pause()
    faded = p.next_frame()  # one short fade, then silence
    assert np.abs(faded[8 * RATE_MS :]).max() == 0 and np.abs(faded[: 4 * RATE_MS]).max() > 0
    assert all(not p.next_frame().any() for _ in range(10))
    p.resume()
    out += [faded] + [p.next_frame() for _ in range(20)]
    played = sum(int(np.count_nonzero(f)) for f in out)
    # every sample but the faded ramp's zeros came out (fade-in ramps from 0 too)
    assert played >= pcm.size - 2 * 8 * RATE_MS
    assert progress[-1][4] is True


def test_flush_drops_the_turn_with_a_fade():
    p, _, _ = make()
    p.enqueue(Segment("a1", 0, tone(1000), (0, 5), [], "hello", clause_done=True))
    p.enqueue(Segment("a2", 0, tone(1000), (0, 5), [], "later", clause_done=True))
    p.next_frame()
    p.flush("a1")
    assert p.active_turn == "a2"
    p.flush()
    f = p.next_frame()
    assert np.abs(f[8 * RATE_MS :]).max() == 0
    assert not p.next_frame().any() and p.active_turn is None
