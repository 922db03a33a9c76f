"""The model wrappers with the real models: Silero VAD, Smart Turn v3.2, Whisper."""

from __future__ import annotations

import numpy as np
import pytest

from voxmesh.testing.speech import read_pcm16, say_to_wav, word_error_rate
from voxmesh_stt import smart_turn
from voxmesh_stt.asr import DecodeScheduler, cut_repeat, repeat_start, shared_lanes
from voxmesh_stt.vad import VadState, shared_model


@pytest.fixture(scope="module")
def sentence(speech_dir):
    path = speech_dir / "models-sentence.wav"
    if not path.exists():
        say_to_wav("I would like to change my delivery address please.", path, lead_silence=0.5, tail_silence=0.5)
    pcm, _ = read_pcm16(path)
    return pcm.astype(np.float32) / 32768


def test_vad_streaming_matches_one_batch_and_finds_the_speech(sentence):
    whole = VadState(shared_model())(sentence)
    state = VadState(shared_model())
    pieces = np.concatenate([state(sentence[i : i + 333]) for i in range(0, sentence.size, 333)])
    assert np.allclose(whole, pieces, atol=1e-5)  # state and context carry across pieces
    speech = whole > 0.5
    assert not speech[:10].any() and not speech[-10:].any()  # the 0.5 s of padding
    assert speech.mean() > 0.5
    assert VadState(shared_model())(np.zeros(16000, np.float32)).max() < 0.1


def test_log_mel_matches_whisper_conventions():
    from faster_whisper.feature_extractor import FeatureExtractor

    # Same Slaney mel filters as faster-whisper's extractor (an independent implementation).
    assert np.allclose(smart_turn.mel_filters(), FeatureExtractor().mel_filters, atol=1e-7)
    feats = smart_turn.prepare(np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32))
    assert feats.shape == (1, 80, 800) and feats.dtype == np.float32
    assert feats.max() <= 1.5 and feats.max() - feats.min() <= 2.0 + 1e-6  # clamped to 8 log10 units, /4


def test_smart_turn_model_runs(smart_turn_path, sentence):
    model = smart_turn.load(smart_turn_path)
    assert model is not None
    p = model(sentence)
    assert 0.0 <= p <= 1.0
    assert smart_turn.load("") is None and smart_turn.load("/nonexistent.onnx") is None


def test_whisper_decode_bounds_and_prefix(sentence):
    asr = shared_lanes(lanes=1)[0]
    full = asr.decode(sentence, beam_size=2)
    assert word_error_rate("I would like to change my delivery address please.", full.text) <= 0.2
    assert full.window_s < 30  # padded clip, not Whisper's 30 s window
    forced = asr.decode(sentence, prefix="I would like")
    assert forced.text.startswith("I would like")
    assert asr.decode(np.zeros(16000, np.float32)).text == ""


def test_loop_detection():
    assert repeat_start("Where is my door? Where is my door?") == 4
    assert repeat_start("my number is five five five one two") is None
    assert cut_repeat("Where is my door? Where is my door?") == "Where is my door?"
    assert cut_repeat("Can you tell me when it arrives? Can you tell me when") == "Can you tell me when it arrives?"
    assert cut_repeat("Hello? Hello? Hello? Hello? Hello") == "Hello?"


async def test_scheduler_runs_by_priority_and_drops_cancelled_work():
    import asyncio
    import threading

    sched = DecodeScheduler("test")
    gate, running = threading.Event(), threading.Event()
    order: list[str] = []

    def block(_) -> None:
        running.set()
        gate.wait(5)

    try:
        blocker = sched.submit(2, block)
        assert running.wait(5)  # the worker is busy before the rest is queued behind it
        low = sched.submit(2, lambda _: order.append("interim"))
        stale = sched.submit(1, lambda _: order.append("stale"))
        high = sched.submit(0, lambda _: order.append("final"))
        stale.cancel()
        assert sched.backlog() == 3  # running + two waiting
        gate.set()
        await asyncio.wrap_future(low)
        await asyncio.wrap_future(blocker)
        await asyncio.wrap_future(high)
        assert order == ["final", "interim"]
    finally:
        sched.close()


async def test_scheduler_keeps_the_urgent_lane_free_of_interims():
    """Two lanes: interims run only on the background lane (the second waits
    for the first), a pause's decode starts at once on the urgent lane next to
    the running interim, and takes the background lane only while the urgent
    one is busy."""
    import asyncio
    import threading

    from voxmesh_stt.asr import PRIO_FINAL, PRIO_INTERIM, PRIO_SPECULATIVE

    sched = DecodeScheduler("test", ["urgent", "background"])
    gate, running = threading.Event(), threading.Event()
    started: list[tuple[str, str]] = []
    try:
        first = sched.submit(PRIO_INTERIM, lambda lane: (started.append(("interim1", lane)), running.set(), gate.wait(5)))
        assert running.wait(5)
        second = sched.submit(PRIO_INTERIM, lambda lane: started.append(("interim2", lane)))
        spec = sched.submit(PRIO_SPECULATIVE, lambda lane: started.append(("speculative", lane)))
        final = sched.submit(PRIO_FINAL, lambda lane: started.append(("final", lane)))
        await asyncio.wait_for(asyncio.wrap_future(spec), 5)
        await asyncio.wait_for(asyncio.wrap_future(final), 5)
        assert not second.done() and not first.done()  # the urgent lane never took the waiting interim
        gate.set()
        await asyncio.wait_for(asyncio.wrap_future(second), 5)
        assert started == [("interim1", "background"), ("final", "urgent"), ("speculative", "urgent"),
                           ("interim2", "background")]

        # urgent lane busy: the next pause's decode takes the background lane
        gate2, running2 = threading.Event(), threading.Event()
        started.clear()
        busy = sched.submit(PRIO_FINAL, lambda lane: (started.append(("final", lane)), running2.set(), gate2.wait(5)))
        assert running2.wait(5)
        other = sched.submit(PRIO_SPECULATIVE, lambda lane: started.append(("speculative", lane)))
        await asyncio.wait_for(asyncio.wrap_future(other), 5)
        gate2.set()
        await asyncio.wait_for(asyncio.wrap_future(busy), 5)
        assert started == [("final", "urgent"), ("speculative", "background")]
    finally:
        gate.set()
        sched.close()


def test_background_lanes_run_at_lower_cpu_priority():
    """The background lane's model computes on threads at background_nice; the
    urgent lane's at the process's own priority."""
    import os

    urgent, background = shared_lanes(lanes=2, background_nice=19)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert urgent.thread_ids and background.thread_ids
    assert all(os.getpriority(os.PRIO_PROCESS, t) == base for t in urgent.thread_ids)
    assert all(os.getpriority(os.PRIO_PROCESS, t) == min(19, base + 19) for t in background.thread_ids)

    def cpu_ticks(tids) -> int:
        total = 0
        for tid in tids:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total

    before = cpu_ticks(background.thread_ids)
    for _ in range(3):
        background.decode(np.zeros(16000 * 4, dtype=np.float32))
    assert cpu_ticks(background.thread_ids) > before  # the decode ran on the niced threads


def test_decoder_confidence_of_the_last_words(sentence):
    asr = shared_lanes(lanes=1)[0]
    greedy = asr.decode(sentence)
    # the last words of the text, each with the probability of its least likely token
    assert greedy.tail and [w for w, _ in greedy.tail] == greedy.text.split()[-len(greedy.tail) :]
    assert all(0.0 < p <= 1.0 for _, p in greedy.tail)
    assert greedy.tail[-1][1] > 0.5  # "please." is clearly spoken
    # beam search gets them from an alignment pass
    beam = asr.decode(sentence, beam_size=2)
    assert beam.tail and all(0.0 < p <= 1.0 for _, p in beam.tail)
    assert asr.decode(np.zeros(16000, np.float32)).tail == ()  # no words, nothing to describe
    # interims do not ask for it (same text, no logits copied)
    plan = asr.plan(sentence)
    encoded, encode_s = asr.encode(plan)
    plain = asr.finish(plan, encoded, encode_s, confidence=False)
    assert plain.text == greedy.text and plain.tail == ()


def test_a_sentence_said_again_is_cut_and_keeps_the_confidence_of_its_last_words(speech_dir):
    """With a short encoder pad Whisper says a short question again and again
    ("Where is my door? Where is my door? Where"): the decode keeps the first
    one, and the end-of-turn policy still gets the confidence of ITS last words
    (an empty tail would read as 'not known' and skip the doubt rule)."""
    path = speech_dir / "models-door.wav"
    if not path.exists():
        say_to_wav("Where is my door?", path, lead_silence=0.5, tail_silence=0.5)
    pcm, _ = read_pcm16(path)
    asr = shared_lanes(lanes=1)[0]
    plan = asr.plan(pcm.astype(np.float32) / 32768, pad_s=1.0)
    encoded, encode_s = asr.encode(plan)
    ids, *_ = asr._generate(plan, encoded, 1, False)
    assert repeat_start(asr._text(ids, [])) is not None  # the search did loop
    result = asr.finish(plan, encoded, encode_s)
    assert result.text == "Where is my door?"
    assert [w for w, _ in result.tail] == ["is", "my", "door?"]
    assert result.tail[-1][1] > 0.5
