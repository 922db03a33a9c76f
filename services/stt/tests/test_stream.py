"""Timeline tests of the stream state machine with scripted audio and virtual time.

The models are replaced by test doubles (named *Double) that read a script out of
the audio itself: each scripted word is a run of samples at its own amplitude, so
the ASR double can "hear" which words a clip holds and the turn-model double can
tell which word the audio ends on. Everything else (VAD windows, hysteresis, the
silence clock, speculative finals, the turn judgement, stable prefixes) is the
real code. The service tests (test_service.py) run the real models.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from voxmesh.core.metrics import metric
from voxmesh_stt.stream import (
    EndOfTurn,
    Final,
    Interim,
    SpeechStarted,
    SpeechStopped,
    StreamConfig,
    Transcript,
    TurnStream,
    stable_between,
)

SR = 16000
WORD_MS = 320  # every scripted word lasts this long


@dataclass
class Word:
    text: str
    p_complete: float = 0.1  # what the turn-model double says when audio ends on it
    asr_prob: float = 0.95  # the ASR double's confidence in this word (Transcript.tail)


class Script:
    """Words and pauses -> int16 PCM where word i is a run at amplitude 2000 + 50*i."""

    def __init__(self, *items: Word | int) -> None:
        self.items = items
        self.words = [w for w in items if isinstance(w, Word)]
        chunks = []
        self.speech_end_ms = 0
        t = 0
        for it in items:
            if isinstance(it, Word):
                idx = self.words.index(it)
                chunks.append(np.full(WORD_MS * SR // 1000, 2000 + 50 * idx, dtype=np.int16))
                t += WORD_MS
                self.speech_end_ms = t
            else:
                chunks.append(np.zeros(it * SR // 1000, dtype=np.int16))
                t += it
        self.pcm = np.concatenate(chunks)

    def word_at(self, level: float) -> Word | None:
        idx = int(round((level * 32768 - 2000) / 50))
        return self.words[idx] if 0 <= idx < len(self.words) else None

    def words_in(self, audio: np.ndarray) -> list[Word]:
        out: list[Word] = []
        nz = audio[np.abs(audio) > 0.01]
        for level in np.unique(np.round(nz * 32768)):
            w = self.word_at(level / 32768)
            if w is not None and w not in out:
                out.append(w)
        return sorted(out, key=self.words.index)


class EnergyVadDouble:
    """Speech probability by the window's level: 0.95 for a scripted word, 0.4 for
    low noise (between Silero's offset and onset thresholds), 0.02 for silence."""

    def __init__(self) -> None:
        self.pending = np.zeros(0, dtype=np.float32)

    async def __call__(self, samples: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self.pending, samples])
        n = buf.size // 512
        self.pending = buf[n * 512 :]
        win = buf[: n * 512].reshape(n, 512) if n else np.zeros((0, 512), dtype=np.float32)
        level = np.abs(win).mean(axis=1)
        return np.where(level > 0.05, 0.95, np.where(level > 0.01, 0.4, 0.02)).astype(np.float32)


class AsrDouble:
    """Transcribes the scripted words present in the clip; keeps the forced prefix."""

    def __init__(self, script: Script, seconds: float = 0.05) -> None:
        self.script = script
        self.seconds = seconds
        self.calls: list[tuple[str, int, str]] = []  # (kind, samples, prefix)
        self.gate: asyncio.Event | None = None

    async def __call__(self, audio: np.ndarray, prefix: str, kind: str) -> Transcript:
        self.calls.append((kind, audio.size, prefix))
        if self.gate is not None:
            await self.gate.wait()
        words = self.script.words_in(audio)
        text = " ".join(w.text for w in words)
        if prefix and not text.startswith(prefix):
            text = prefix + text[len(prefix) :]
        return Transcript(text, self.seconds, tuple((w.text, w.asr_prob) for w in words[-3:]))


class TurnModelDouble:
    """P(complete) = the scripted value of the last word in the clip; with
    `short_tail_factor`, scaled by it when the clip ends less than 150 ms after the
    last word (Smart Turn doubts a turn more with little trailing silence)."""

    def __init__(self, script: Script, short_tail_factor: float = 1.0) -> None:
        self.script = script
        self.short_tail_factor = short_tail_factor
        self.calls = 0

    async def __call__(self, audio: np.ndarray) -> float:
        self.calls += 1
        words = self.script.words_in(audio)
        if not words:
            return 0.0
        voiced = np.nonzero(np.abs(audio) > 0.01)[0]
        tail_ms = (audio.size - voiced[-1]) * 1000 / SR if voiced.size else 0
        return words[-1].p_complete * (self.short_tail_factor if tail_ms < 150 else 1.0)


class VirtualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Timeline:
    events: list  # (audio ms fed when emitted, event)

    def of(self, cls) -> list:
        return [e for _, e in self.events if isinstance(e, cls)]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for _, e in self.events]


async def play(script: Script, *, turn_model: bool | TurnModelDouble = True, chunk_ms: int = 20, tail_ms: int = 0,
               flush: bool = True, asr: AsrDouble | None = None, backlog=lambda: 0, **cfg) -> tuple[Timeline, AsrDouble, TurnStream]:
    clock = VirtualClock()
    fed = {"ms": 0}
    events: list = []
    asr = asr or AsrDouble(script)
    stream = TurnStream(
        StreamConfig(**cfg),
        vad=EnergyVadDouble(),
        decode=asr,
        turn_model=turn_model if isinstance(turn_model, TurnModelDouble) else TurnModelDouble(script) if turn_model else None,
        emit=lambda ev: events.append((fed["ms"], ev)),
        clock=clock,
        backlog=backlog,
    )
    pcm = np.concatenate([script.pcm, np.zeros(tail_ms * SR // 1000, dtype=np.int16)]).astype("<i2").tobytes()
    step = chunk_ms * 32
    for i in range(0, len(pcm), step):
        await stream.feed(pcm[i : i + step])
        fed["ms"] = (i + step) // 32
        clock.t += chunk_ms / 1000
        for _ in range(4):  # let the doubles' tasks (judgement, decodes) finish
            await asyncio.sleep(0)
    if flush:
        await stream.finish()
    else:
        await stream.aclose()
    return Timeline(events), asr, stream


def assert_turn_shape(tl: Timeline) -> None:
    """Per turn: SpeechStarted first, started/stopped alternate, one Final right
    before the EndOfTurn, nothing of the turn after it."""
    open_utt = None
    closed: set[int] = set()
    speaking = False
    prev = None
    for _, ev in tl.events:
        utt = ev.utterance_id
        assert utt not in closed, f"event after EndOfTurn: {ev}"
        if open_utt is None:
            assert isinstance(ev, SpeechStarted), f"turn must open with SpeechStarted: {ev}"
            open_utt = utt
        assert utt == open_utt
        if isinstance(ev, SpeechStarted):
            assert not speaking
            speaking = True
        elif isinstance(ev, SpeechStopped):
            assert speaking
            speaking = False
        elif isinstance(ev, EndOfTurn):
            assert isinstance(prev, Final) and prev.utterance_id == utt, "Final must come right before EndOfTurn"
            assert not speaking
            closed.add(utt)
            open_utt = None
        elif isinstance(ev, Final):
            pass
        prev = ev
    assert open_utt is None, "a turn was left open"


W = Word


async def test_complete_question_ends_fast():
    s = Script(400, W("where"), W("is"), W("my"), W("parcel?", p_complete=0.95))
    tl, asr, _ = await play(s, tail_ms=1500, min_silence_ms=200, max_silence_ms=2000)
    assert_turn_shape(tl)
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "model"
    # the judgement comes at min_silence; one window of slack for the VAD's grid
    assert eot.audio_offset_ms - s.speech_end_ms <= 200 + 64
    (final,) = tl.of(Final)
    assert final.text == "where is my parcel?"
    assert final.start_ms == pytest.approx(400, abs=32) and final.end_ms == pytest.approx(s.speech_end_ms, abs=32)
    # the speculative decode started at the offset became the final: no second decode
    assert [k for k, _, _ in asr.calls] == ["speculative"]


async def test_a_doubted_first_look_is_taken_again_at_min_silence():
    # At the start of the pause the turn model (double) is unsure (0.95 * 0.1); at
    # min_silence_ms it sees more silence and is sure: the turn ends then, not at
    # the long wait the first look asked for.
    s = Script(300, W("thank"), W("you"), W("very"), W("much", p_complete=0.95))
    model = TurnModelDouble(s, short_tail_factor=0.1)
    tl, _, _ = await play(s, turn_model=model, tail_ms=2500, min_silence_ms=200, max_silence_ms=2000)
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "model" and model.calls == 2
    assert eot.audio_offset_ms - s.speech_end_ms <= 200 + 64


async def test_pause_inside_sentence_does_not_end_turn():
    s = Script(200, W("I"), W("would"), W("like"), W("to", p_complete=0.3), 900, W("cancel"), W("it.", p_complete=0.9))
    tl, _, _ = await play(s, tail_ms=1000)
    assert_turn_shape(tl)
    (final,) = tl.of(Final)
    assert final.text == "I would like to cancel it."
    assert len(tl.of(SpeechStarted)) == 2 and len(tl.of(SpeechStopped)) == 2
    assert tl.of(EndOfTurn)[0].reason == "model"


async def test_digit_string_with_pauses_holds_even_when_the_audio_model_says_complete():
    # The audio-model double is wrong on purpose (p=0.9 after every digit): the
    # transcript ending in a digit holds the turn open.
    s = Script(
        200, W("my"), W("order"), W("number"), W("is"), W("four", 0.9), 800, W("two", 0.9), 1000,
        W("one", 0.9), 700, W("nine", 0.9),
    )
    tl, _, _ = await play(s, tail_ms=2500, max_silence_ms=2000)
    assert_turn_shape(tl)
    (final,) = tl.of(Final)
    assert final.text == "my order number is four two one nine"
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "max_wait"
    assert eot.audio_offset_ms - s.speech_end_ms == pytest.approx(2000, abs=64)


async def test_trailing_um_holds_then_the_turn_goes_on():
    s = Script(200, W("can"), W("you"), W("tell"), W("me"), W("about"), W("um", 0.6), 1400, W("my"), W("order.", 0.95))
    tl, _, _ = await play(s, tail_ms=800)
    assert_turn_shape(tl)
    assert [f.text for f in tl.of(Final)] == ["can you tell me about um my order."]
    assert tl.of(EndOfTurn)[0].reason == "model"


async def test_maximum_wait_fires_when_the_model_never_says_complete():
    # "I think that" ends on a word that usually continues: the judgement holds,
    # the speaker never goes on, the maximum wait ends the turn.
    s = Script(200, W("I"), W("think"), W("that", p_complete=0.0))
    tl, _, _ = await play(s, tail_ms=3000, min_silence_ms=200, max_silence_ms=1500)
    assert_turn_shape(tl)
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "max_wait"
    assert eot.audio_offset_ms - s.speech_end_ms == pytest.approx(1500, abs=64)


async def test_closed_sentence_that_prosody_doubts_waits_a_little():
    # Text "final" but audio p=0.1: between min and max silence (a comma pause
    # "..., please" must not end the turn at min_silence).
    s = Script(200, W("cancel"), W("my"), W("subscription.", 0.1), 300, W("please.", 0.9))
    tl, _, _ = await play(s, tail_ms=1500)
    assert_turn_shape(tl)
    assert [f.text for f in tl.of(Final)] == ["cancel my subscription. please."]


async def test_without_turn_model_silence_ends_the_turn():
    s = Script(300, W("yes"), W("please."))
    tl, _, _ = await play(s, turn_model=False, tail_ms=1000, min_silence_ms=500)
    assert_turn_shape(tl)
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "silence" and eot.probability == -1.0
    assert eot.audio_offset_ms - s.speech_end_ms == pytest.approx(500, abs=64)


async def test_two_turns_get_two_utterance_ids_on_the_caller_clock():
    s = Script(500, W("hello.", 0.95), 1500, W("goodbye.", 0.95))
    tl, _, _ = await play(s, tail_ms=800, stream_offset_ms=60_000)
    assert_turn_shape(tl)
    starts = tl.of(SpeechStarted)
    assert len(starts) == 2 and len(tl.of(EndOfTurn)) == 2
    assert starts[0].audio_offset_ms == pytest.approx(60_500, abs=32)
    assert starts[0].utterance_id == starts[0].audio_offset_ms
    assert starts[1].utterance_id > starts[0].utterance_id
    assert [f.text for f in tl.of(Final)] == ["hello.", "goodbye."]


async def test_speech_started_fires_after_min_speech_ms():
    s = Script(1000, W("stop"))
    tl, _, _ = await play(s, tail_ms=500, min_speech_ms=160)
    fed_ms, started = next((ms, e) for ms, e in tl.events if isinstance(e, SpeechStarted))
    assert started.audio_offset_ms == pytest.approx(1000, abs=32)
    # emitted once 160 ms of speech were scored (5 windows), not at the end of the word
    assert fed_ms - 1000 <= 160 + 64


async def test_short_blip_is_not_an_utterance():
    s = Script(300, 0)
    s.pcm = np.concatenate([np.zeros(4800, np.int16), np.full(900, 3000, np.int16), np.zeros(16000, np.int16)])
    tl, asr, _ = await play(s)
    assert tl.events == [] and asr.calls == []


async def test_flush_on_close_finalizes_the_open_turn():
    s = Script(200, W("one"), W("two"), W("three"))  # no trailing silence: mid-speech
    tl, _, _ = await play(s, tail_ms=0)
    assert_turn_shape(tl)
    assert tl.kinds()[-3:] == ["SpeechStopped", "Final", "EndOfTurn"]
    assert tl.of(EndOfTurn)[0].reason == "flush"
    assert tl.of(Final)[0].text == "one two three"


async def test_flush_in_a_pause_reuses_the_speculative_decode():
    s = Script(200, W("one"), W("two", 0.0))
    tl, asr, _ = await play(s, tail_ms=300)
    assert tl.kinds()[-2:] == ["Final", "EndOfTurn"] and tl.of(EndOfTurn)[0].reason == "flush"
    assert [k for k, _, _ in asr.calls] == ["speculative"]


async def test_odd_byte_pieces_give_the_same_events():
    s = Script(300, W("odd"), W("pieces.", 0.95))
    even, _, _ = await play(s, tail_ms=600, chunk_ms=20)
    clock = VirtualClock()
    events: list = []
    stream = TurnStream(StreamConfig(), vad=EnergyVadDouble(), decode=AsrDouble(s), turn_model=TurnModelDouble(s),
                        emit=events.append, clock=clock)
    pcm = np.concatenate([s.pcm, np.zeros(9600, np.int16)]).astype("<i2").tobytes()
    for i in range(0, len(pcm), 333):
        await stream.feed(pcm[i : i + 333])
        for _ in range(4):
            await asyncio.sleep(0)
    await stream.finish()
    assert events == [e for _, e in even.events]


async def test_interims_have_stable_prefixes_that_later_results_keep():
    s = Script(200, *[W(w) for w in "please tell me where my parcel is right now".split()], W("today.", 0.95))
    tl, asr, _ = await play(s, tail_ms=800, interim_results=True, interim_first_ms=300, interim_interval_ms=300)
    assert_turn_shape(tl)
    interims = tl.of(Interim)
    assert len(interims) >= 5
    (final,) = tl.of(Final)
    stable = ""
    for it in interims:
        assert it.text.startswith(it.stable_prefix)
        assert it.stable_prefix.startswith(stable), "a stable prefix was taken back"
        stable = it.stable_prefix
    assert final.text.startswith(stable) and len(stable.split()) >= 6
    # the stable part is forced into the later decodes instead of searched again
    assert any(prefix for kind, _, prefix in asr.calls if kind != "interim")
    # interims stop at the offset: none after the turn's SpeechStopped
    last_stop = max(i for i, (_, e) in enumerate(tl.events) if isinstance(e, SpeechStopped))
    assert not any(isinstance(e, Interim) for _, e in tl.events[last_stop:])


async def test_the_speculative_final_is_also_said_as_an_interim_before_the_final():
    s = Script(200, W("where"), W("is"), W("my"), W("parcel?", 0.95))
    tl, _, _ = await play(s, tail_ms=800, interim_results=True, interim_first_ms=5000)  # no cadence interims
    kinds = tl.kinds()
    assert kinds.count("Interim") == 1 and kinds.index("Interim") < kinds.index("Final")
    assert tl.of(Interim)[0].text == tl.of(Final)[0].text == "where is my parcel?"
    # without interim_results nothing but the Final carries it
    tl, _, _ = await play(s, tail_ms=800, interim_results=False)
    assert tl.of(Interim) == []


async def test_interims_are_skipped_when_the_executor_is_behind():
    s = Script(200, *[W(w) for w in "a long sentence with many words in it".split()])
    tl, asr, _ = await play(s, tail_ms=600, interim_results=True, backlog=lambda: 3)
    assert not [c for c in asr.calls if c[0] == "interim"]
    # only the speculative final's text, at the pause
    assert [i.text for i in tl.of(Interim)] == [tl.of(Final)[0].text]
    assert len(tl.of(Final)) == 1


async def test_interim_cpu_share_spaces_decodes_in_wall_time():
    s = Script(200, *[W(w) for w in "one two three four five six seven eight nine ten".split()])
    # Each decode reports 0.5 s of model time (the double returns at once): at a
    # share of 0.5 the stream then rests 0.5 s before its next interim.
    slow = AsrDouble(s, seconds=0.5)
    tl, asr, _ = await play(s, asr=slow, tail_ms=300, interim_results=True, interim_first_ms=200, interim_interval_ms=100,
                            interim_cpu_share=0.5)
    n = len([c for c in asr.calls if c[0] == "interim"])
    assert 4 <= n <= 7  # 3.2 s of speech; at the 100 ms interval alone it would be ~30


async def test_false_end_of_turn_is_counted():
    counter = metric("voxmesh_eou_suspect_total").labels("false")
    before = counter._value.get()
    s = Script(200, W("I"), W("want.", 0.95), 500, W("pizza.", 0.95))
    tl, _, _ = await play(s, tail_ms=800)
    assert len(tl.of(EndOfTurn)) == 2
    assert counter._value.get() == before + 1


async def test_final_waits_for_the_speculative_decode_and_aclose_cancels_it():
    s = Script(200, W("slow"), W("decode.", 0.95))
    asr = AsrDouble(s)
    asr.gate = asyncio.Event()  # decodes never finish
    tl, _, stream = await play(s, asr=asr, tail_ms=600, flush=False)
    assert tl.of(Final) == [] and tl.of(EndOfTurn) == []
    assert all(task.done() for task in stream._tasks)  # aclose ended every task it started


async def test_turn_longer_than_the_decode_window_keeps_every_word():
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    items: list = [200]
    for i, w in enumerate(words):
        items.append(W(w + ("." if i == len(words) - 1 else ""), 0.95 if i == len(words) - 1 else 0.1))
        if i % 4 == 3:
            items.append(150)  # short breaths: SpeechStopped, no end of turn
    s = Script(*items)
    tl, asr, _ = await play(s, tail_ms=800, max_window_s=1.5, interim_results=True)
    assert_turn_shape(tl)
    (final,) = tl.of(Final)
    assert final.text == " ".join(words) + "."
    # the older audio was decoded once and frozen; no decode saw the whole turn
    assert max(n for _, n, _ in asr.calls) < len(s.pcm)


async def test_steady_noise_after_speech_does_not_hold_the_turn_open():
    s = Script(200, W("hello"), W("there.", 0.95))
    spike = np.full(512, 2000, np.int16)  # one window that crosses the onset threshold
    noise = np.full(3 * SR, 800, np.int16)  # then noise the VAD scores at 0.4
    s.pcm = np.concatenate([s.pcm, np.zeros(3200, np.int16), spike, noise])
    tl, _, _ = await play(s, tail_ms=0, flush=False)
    assert len(tl.of(EndOfTurn)) == 1


def test_stable_between():
    assert stable_between("", "where is my", "") == ""
    assert stable_between("where is my", "where is my order", "") == "where is my"
    assert stable_between("where is my order?", "where is my order for two", "where is") == "where is my order"
    assert stable_between("where is a", "where was b c", "where") == "where"
    assert stable_between("x", "y z", "where") == "where"  # never shorter than promised


# ---------------------------------------------------------------- numbers complete for the agent


async def test_a_four_digit_order_number_ends_the_turn_fast_when_the_agent_expects_four_digits():
    # Smart Turn (double) hears the list-like reading of digits as unfinished
    # (p=0.05), as the real model does on "Where is my order four two one nine?".
    def script():
        return Script(200, W("where"), W("is"), W("my"), W("order"), W("four"), W("two"), W("one"), W("nine.", 0.05))

    s = script()
    tl, _, _ = await play(s, tail_ms=2500, complete_digit_counts=(4,))
    assert_turn_shape(tl)
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "model"
    # judged like a closed sentence the audio model doubts: well under a second
    assert eot.audio_offset_ms - s.speech_end_ms <= 600
    assert tl.of(Final)[0].text == "where is my order four two one nine."
    # without the agent's rule the same turn holds to the maximum wait
    tl, _, _ = await play(script(), tail_ms=2500)
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "max_wait" and eot.audio_offset_ms - s.speech_end_ms == pytest.approx(2000, abs=64)


async def test_a_number_read_in_two_digit_groups_holds_at_the_inner_pause():
    s = Script(200, W("my"), W("order"), W("number"), W("is"), W("four"), W("two", 0.9), 900, W("one"), W("nine.", 0.05))
    tl, _, _ = await play(s, tail_ms=2500, complete_digit_counts=(4,))
    assert_turn_shape(tl)
    # one turn, not cut after "four two" although the audio model says complete there
    (final,) = tl.of(Final)
    assert final.text == "my order number is four two one nine."
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "model" and eot.audio_offset_ms - s.speech_end_ms <= 600


async def test_phone_number_like_groups_hold_when_only_four_digits_are_complete():
    s = Script(
        # (equal Words would be one scripted word: the repeated "five"s differ in p)
        200, W("my"), W("phone"), W("number"), W("is"), W("five", 0.11), W("five", 0.12), W("five", 0.9), 1000,
        W("one"), W("two"), W("three"), W("four.", 0.9),
    )
    tl, _, _ = await play(s, tail_ms=2500, complete_digit_counts=(4,))
    assert_turn_shape(tl)
    (final,) = tl.of(Final)
    assert final.text == "my phone number is five five five one two three four."
    # 3 digits at the inner pause, 7 at the end: neither is a length the agent
    # expects, so both hold (the end to the maximum wait)
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "max_wait"


# ---------------------------------------------------------------- confidence of the last word


async def test_an_uncertain_last_word_holds_a_closed_sentence_through_the_pause():
    # "about um" heard as "about him?": both the audio model (double) and the text
    # say complete, only the decoder's low confidence in "him?" tells otherwise.
    def script(prob):
        return Script(200, W("tell"), W("me"), W("about"), W("him?", 0.95, asr_prob=prob), 1100, W("my"), W("invoice.", 0.95))

    tl, _, _ = await play(script(0.4), tail_ms=1500)
    assert_turn_shape(tl)
    assert [f.text for f in tl.of(Final)] == ["tell me about him? my invoice."]
    # the same words heard with confidence end the turn at the pause (the cut-off
    # the rule prevents when the words are in doubt)
    tl, _, _ = await play(script(0.95), tail_ms=1500)
    assert [f.text for f in tl.of(Final)] == ["tell me about him?", "my invoice."]


async def test_a_turn_both_models_are_sure_of_ends_before_min_silence():
    s = Script(400, W("where"), W("is"), W("my"), W("parcel?", p_complete=0.95))
    tl, _, _ = await play(s, tail_ms=1500, min_silence_ms=200, fast_silence_ms=96)
    (eot,) = tl.of(EndOfTurn)
    assert eot.reason == "model"
    assert eot.audio_offset_ms - s.speech_end_ms <= 96 + 64
    # a doubting audio model (0.6 < 0.9) keeps min_silence_ms
    s = Script(400, W("where"), W("is"), W("my"), W("parcel?", p_complete=0.6))
    tl, _, _ = await play(s, tail_ms=1500, min_silence_ms=200, fast_silence_ms=96)
    (eot,) = tl.of(EndOfTurn)
    assert eot.audio_offset_ms - s.speech_end_ms >= 200
