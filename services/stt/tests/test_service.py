"""The stt service over real gRPC with its real models: Silero VAD, Smart Turn v3.2
and Whisper tiny.en, on espeak-ng speech streamed in 20 ms pieces."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import numpy as np
import pytest
from support import config, transcribe

from voxmesh.testing.speech import normalize_words, read_pcm16, say_to_wav, word_error_rate
from voxmesh.v1 import stt_pb2, stt_pb2_grpc

SR = 16000


def speech(speech_dir, text: str, name: str, **kw) -> np.ndarray:
    path = speech_dir / f"{name}.wav"
    if not path.exists():
        say_to_wav(text, path, **kw)
    pcm, rate = read_pcm16(path)
    assert rate == SR
    return pcm


def silence(ms: int) -> np.ndarray:
    return np.zeros(ms * SR // 1000, dtype=np.int16)


def check_event_order(run) -> None:
    """SpeechStarted opens each turn; started/stopped alternate; exactly one Final
    per turn, immediately before its EndOfTurn; nothing of a turn after that."""
    open_utt, speaking, closed, prev = None, False, set(), None
    for e in run.events:
        utt = e.msg.utterance_id
        assert utt not in closed, f"event after the turn's EndOfTurn: {e.kind}"
        if open_utt is None:
            assert e.kind == "speech_started", e.kind
            open_utt = utt
        assert utt == open_utt
        if e.kind == "speech_started":
            assert not speaking
            speaking = True
        elif e.kind == "speech_stopped":
            assert speaking
            speaking = False
        elif e.kind == "end_of_turn":
            assert prev is not None and prev.kind == "final" and prev.msg.utterance_id == utt
            closed.add(utt)
            open_utt = None
        elif e.kind == "final":
            assert not speaking
        prev = e
    assert open_utt is None


SENTENCES = [
    ("Where is my order four two one nine?", {"where", "order", "nine"}),
    ("I would like to change my delivery address.", {"change", "delivery", "address"}),
    ("Thank you very much for your help today.", {"thank", "help", "today"}),
]


async def test_transcribes_known_sentences(stt_server, speech_dir):
    parts = [silence(500)]
    for i, (text, _) in enumerate(SENTENCES):
        parts += [speech(speech_dir, text, f"sentence{i}"), silence(2600)]
    run = await transcribe(stt_server["target"], np.concatenate(parts), speed=1.0)
    check_event_order(run)
    finals = run.of("final")
    assert len(finals) == len(SENTENCES), [f.text for f in finals]
    wers = []
    for final, (text, keys) in zip(finals, SENTENCES):
        words = set(w.strip(".,?!").lower() for w in final.text.split())
        assert keys <= words, (final.text, keys)
        wers.append(word_error_rate(text, final.text))
    print(f"\nWER per sentence: {[round(w, 3) for w in wers]}; mean {np.mean(wers):.3f}")
    print("finals:", [f.text for f in finals])
    print("eot:", [(e.reason, round(e.probability, 3)) for e in run.of("end_of_turn")])
    # offsets are on the stream's audio clock and increase
    starts = [s.audio_offset_ms for s in run.of("speech_started")]
    assert starts == sorted(starts) and 400 <= starts[0] <= 800


async def test_interims_while_speaking_and_a_fast_final(stt_server, speech_dir):
    text = "Could you please tell me when the package with my new running shoes will arrive at my house?"
    pcm = np.concatenate([silence(300), speech(speech_dir, text, "long", wpm=150), silence(2500)])
    run = await transcribe(stt_server["target"], pcm, interim_results=True)
    check_event_order(run)
    interims = run.of("interim")
    (final,) = run.of("final")
    assert len(interims) >= 2, "interims while the user speaks"
    stable = ""
    for it in interims:
        assert it.text.startswith(it.stable_prefix)
        assert it.stable_prefix.startswith(stable)
        stable = it.stable_prefix
    assert final.text.startswith(stable)
    assert {"package", "arrive"} <= {w.strip(".,?!").lower() for w in final.text.split()}
    first_interim = next(e for e in run.events if e.kind == "interim")
    onset = run.of("speech_started")[0].audio_offset_ms
    stop = run.of("speech_stopped")[-1]
    fin = next(e for e in run.events if e.kind == "final")
    eot = run.of("end_of_turn")[0]
    print(f"\nonset->first interim {first_interim.sent_ms - onset} ms (audio clock); "
          f"end of speech->final {fin.sent_ms - stop.audio_offset_ms} ms; eot {eot.reason} p={eot.probability:.2f}; "
          f"WER {word_error_rate(text, final.text):.3f}: {final.text!r}")


async def test_pauses_between_digits_do_not_end_the_turn(stt_server, speech_dir):
    pieces = [silence(400), speech(speech_dir, "My order number is four", "digits0")]
    for i, digit in enumerate(["two", "one", "nine"], 1):
        pieces += [silence(900), speech(speech_dir, digit, f"digits{i}")]
    pieces.append(silence(2800))
    run = await transcribe(stt_server["target"], np.concatenate(pieces), speed=1.5)
    check_event_order(run)
    finals = run.of("final")
    assert len(finals) == 1, [f.text for f in finals]
    assert len(run.of("speech_started")) >= 3  # one per spoken group, same turn
    digits = [w for w in normalize_words(finals[0].text) if w.isdigit()]
    print(f"\ndigits turn: {finals[0].text!r} -> {digits}; eot {run.of('end_of_turn')[0].reason}")
    assert digits[-2:] == ["1", "9"]


async def test_flush_on_close(stt_server, speech_dir):
    pcm = np.concatenate([silence(300), speech(speech_dir, "Please cancel the order", "flush")])
    run = await transcribe(stt_server["target"], pcm, speed=4.0)  # closes right after the last word
    check_event_order(run)
    assert run.kinds()[-2:] == ["final", "end_of_turn"]
    assert run.of("end_of_turn")[0].reason == "flush"
    assert "cancel" in run.of("final")[0].text.lower()


async def test_odd_sized_pieces(stt_server, speech_dir):
    pcm = np.concatenate([silence(300), speech(speech_dir, "Hello, can you hear me?", "odd"), silence(2200)])
    run = await transcribe(stt_server["target"], pcm, chunk_bytes=333, speed=3.0)
    check_event_order(run)
    assert "hear" in run.of("final")[0].text.lower()


async def test_silence_gives_no_events(stt_server):
    run = await transcribe(stt_server["target"], silence(1500), speed=8.0)
    assert run.events == []


async def _call(target: str, requests: list) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = stt_pb2_grpc.SttStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Transcribe(iter(requests)):
                pass
        return err.value


@pytest.mark.parametrize(
    "requests, words",
    [
        ([stt_pb2.TranscribeRequest(audio=b"\0\0" * 320)], "first TranscribeRequest must carry config"),
        ([config(sample_rate=8000)], "sample_rate must be 16000"),
        ([config(), stt_pb2.TranscribeRequest(audio=b"\0" * 640), config()], "config may only be sent once"),
        ([config(turn={"min_silence_ms": 900, "max_silence_ms": 300})], "max_silence_ms"),
        ([stt_pb2.TranscribeRequest(config=stt_pb2.TranscribeConfig(sample_rate=16000, language="de"))], "English only"),
    ],
)
async def test_bad_input_is_answered_with_invalid_argument(stt_server, requests, words):
    err = await _call(stt_server["target"], requests)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details()
    assert stt_server["proc"].poll() is None


async def test_caller_cancel_mid_turn_leaves_the_service_healthy(stt_server, speech_dir):
    pcm = np.concatenate([silence(200), speech(speech_dir, "This call is cancelled in the middle of speaking", "cancel")])
    data = pcm.astype("<i2").tobytes()

    async def reqs():
        yield config()
        for i in range(0, len(data), 640):
            yield stt_pb2.TranscribeRequest(audio=data[i : i + 640])
            await asyncio.sleep(0.005)
        await asyncio.sleep(30)

    async with grpc.aio.insecure_channel(stt_server["target"]) as ch:
        call = stt_pb2_grpc.SttStub(ch).Transcribe(reqs())
        async for ev in call:
            if ev.WhichOneof("event") == "speech_started":
                call.cancel()
                break
    # a fresh stream right after still works
    run = await transcribe(stt_server["target"], np.concatenate([speech(speech_dir, "Yes please.", "after"), silence(2200)]), speed=3)
    assert len(run.of("final")) == 1


async def _many(target: str, batches) -> tuple[dict[int, list], dict[int, tuple]]:
    """One TranscribeMany call: send `batches` (lists of TranscribePart, each
    list one message, paced by the async iterator), then collect every stream's
    events and status until stt ends the call."""
    events: dict[int, list] = {}
    status: dict[int, tuple] = {}
    async with grpc.aio.insecure_channel(target) as ch:
        async for batch in stt_pb2_grpc.SttStub(ch).TranscribeMany(batches):
            for part in batch.parts:
                assert part.stream_id not in status, "a part after the stream's status"
                if part.WhichOneof("part") == "event":
                    events.setdefault(part.stream_id, []).append(part.event)
                else:
                    status[part.stream_id] = (part.status.code, part.status.details)
    return events, status


def _audio_part(sid: int, piece: bytes) -> stt_pb2.TranscribePart:
    return stt_pb2.TranscribePart(stream_id=sid, request=stt_pb2.TranscribeRequest(audio=piece))


async def test_many_streams_on_one_call_each_as_its_own_transcribe(stt_server, speech_dir):
    """Three sentences at once on one call, their 40 ms pieces in the same
    messages: each stream's transcript is its own, each ends with status OK
    after its `end`. On the same call: a stream with a bad config and audio
    for a stream that was never opened get INVALID_ARGUMENT with the reason
    (and the service logs them), a stream cancelled mid-speech gets nothing
    more, and none of that disturbs the other streams."""
    pcms = {sid: np.concatenate([silence(300), speech(speech_dir, text, f"many{sid}"), silence(2300)]).astype("<i2").tobytes()
            for sid, (text, _) in enumerate(SENTENCES, start=1)}
    cancelled = np.concatenate([silence(200), speech(speech_dir, "This stream is cancelled while it speaks", "many-cancel")])
    pcms[4] = cancelled.astype("<i2").tobytes()

    async def batches():
        yield stt_pb2.TranscribeBatch(parts=[
            *(stt_pb2.TranscribePart(stream_id=sid, request=config(session_id=f"s{sid}")) for sid in pcms),
            stt_pb2.TranscribePart(stream_id=5, request=config(sample_rate=8000)),
            _audio_part(6, b"\0\0" * 320),
        ])
        step, longest = 1280, max(len(p) for p in pcms.values())
        for i in range(0, longest, step):
            parts = [_audio_part(sid, p[i : i + step]) for sid, p in pcms.items() if i < len(p) and not (sid == 4 and i > len(p) // 2)]
            if i == len(pcms[4]) // 2 // step * step + step:
                parts.append(stt_pb2.TranscribePart(stream_id=4, cancel=True))
            yield stt_pb2.TranscribeBatch(parts=parts)
            await asyncio.sleep(0.04 / 3)  # 3x real time
        yield stt_pb2.TranscribeBatch(parts=[stt_pb2.TranscribePart(stream_id=sid, end=True) for sid in (1, 2, 3)])

    events, status = await _many(stt_server["target"], batches())
    for sid, (_, words) in enumerate(SENTENCES, start=1):
        assert status[sid] == (0, ""), status
        finals = [e.final.text for e in events[sid] if e.WhichOneof("event") == "final"]
        assert len(finals) == 1 and words <= {w.strip(".,?!").lower() for w in finals[0].split()}, (sid, finals)
        assert events[sid][-1].WhichOneof("event") == "end_of_turn"
    assert status[5][0] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "sample_rate must be 16000" in status[5][1]
    assert status[6][0] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "must carry config" in status[6][1]
    assert 4 not in status
    assert not any(e.WhichOneof("event") in ("final", "end_of_turn") for e in events.get(4, []))
    assert stt_server["proc"].poll() is None


async def test_many_flushes_open_streams_when_the_caller_closes_the_call(stt_server, speech_dir):
    """A half-close of the call is every open stream's `end`: the open turn is
    finalized (reason "flush") and each stream ends with status OK."""
    data = speech(speech_dir, "Please check my order.", "many-flush").astype("<i2").tobytes()

    async def batches():
        yield stt_pb2.TranscribeBatch(parts=[stt_pb2.TranscribePart(stream_id=9, request=config())])
        for i in range(0, len(data), 3200):
            yield stt_pb2.TranscribeBatch(parts=[_audio_part(9, data[i : i + 3200])])

    events, status = await _many(stt_server["target"], batches())
    assert status == {9: (0, "")}
    ends = [e.end_of_turn for e in events[9] if e.WhichOneof("event") == "end_of_turn"]
    assert [e.reason for e in ends] == ["flush"]


async def test_metrics_are_exported(stt_server):
    # One refused request of its own, so the error series exists whatever ran before.
    await _call(stt_server["target"], [config(sample_rate=8000)])
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(stt_server["metrics"], timeout=5).read().decode())
    for name in (
        "voxmesh_stt_active_streams",
        "voxmesh_stt_final_seconds",
        "voxmesh_stt_interim_seconds",
        "voxmesh_stt_decode_seconds",
        "voxmesh_eou_delay_seconds",
        "voxmesh_eou_total",
        "voxmesh_stt_audio_seconds_total",
        "voxmesh_errors_total",
    ):
        assert name in body, name
    assert 'voxmesh_errors_total{where="bad_request"}' in body
