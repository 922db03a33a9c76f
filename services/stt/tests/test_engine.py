"""Engine.decode's choice of encoder window: interims on the interim window, a
pause's decode on the pause window and, when that is the shorter one and its last
word is doubtful, again on the long one; finals on the long one. The Whisper lanes are a test double whose text and
confidence depend on the window it is asked to decode with."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from voxmesh_stt.asr import DecodeResult, DecodeScheduler
from voxmesh_stt.server import Engine
from voxmesh_stt.settings import SttSettings


class WindowScriptedAsrDouble:
    """plan/encode/finish like WhisperAsr; the result is scripted per padding."""

    def __init__(self, script: dict[float, tuple[str, float]]) -> None:
        self.script = script
        self.pads: list[float] = []

    def plan(self, audio, *, prefix="", pad_s=8.0, max_tokens_per_s=8.0):
        self.pads.append(pad_s)
        return SimpleNamespace(audio=audio, prefix=prefix, pad_s=pad_s)

    def encode(self, plan):
        return plan.pad_s, 0.1

    def finish(self, plan, encoded, encode_s, *, beam_size=1, confidence=True):
        text, prob = self.script[encoded]
        tail = ((text.split()[-1], prob),) if confidence else ()
        return DecodeResult(text, encode_s + 0.05, plan.pad_s + 1, 0.0, tail)


@pytest.fixture
def engine_with(request):
    made = []

    def make(script, **settings):
        settings = {"interim_pad_s": 3.0, "pause_pad_s": 3.0, "encoder_pad_s": 8.0, **settings}
        asr = WindowScriptedAsrDouble(script)
        engine = Engine.__new__(Engine)  # no real models: only decode() is under test
        engine.settings = SttSettings(**settings)
        engine.asr = asr
        engine.scheduler = DecodeScheduler("test", [asr, asr])
        made.append(engine.scheduler)
        return engine, asr

    yield make
    for scheduler in made:
        scheduler.close()


AUDIO = np.zeros(16000, dtype=np.float32)
SCRIPT = {3.0: ("where is my order for to one line", 0.19), 8.0: ("where is my order for to one nine", 0.93)}


async def test_a_doubtful_pause_decode_is_done_again_on_the_long_window(engine_with):
    engine, asr = engine_with(SCRIPT)
    result = await engine.decode(AUDIO, "where is my order", "speculative")
    assert asr.pads == [3.0, 8.0]
    assert result.text.endswith("nine") and result.tail_prob == pytest.approx(0.93)
    assert result.seconds == pytest.approx(0.3)  # both decodes count


async def test_a_confident_pause_decode_is_kept(engine_with):
    engine, asr = engine_with({3.0: ("where is my order for to one nine", 0.88), 8.0: ("unused", 1.0)})
    result = await engine.decode(AUDIO, "", "speculative")
    assert asr.pads == [3.0]
    assert result.text.endswith("nine")


@pytest.mark.parametrize(("kind", "pads"), [("interim", [3.0]), ("final", [8.0])])
async def test_interims_use_the_short_window_and_finals_the_long_one(engine_with, kind, pads):
    engine, asr = engine_with(SCRIPT)
    await engine.decode(AUDIO, "", kind)
    assert asr.pads == pads  # an interim is never decoded twice, however doubtful


async def test_no_second_decode_when_the_pause_window_is_the_long_one(engine_with):
    engine, asr = engine_with(SCRIPT, pause_pad_s=8.0)
    result = await engine.decode(AUDIO, "", "speculative")
    assert asr.pads == [8.0] and result.text.endswith("nine")


async def test_the_same_doubtful_word_on_both_windows_stays_doubtful(engine_with):
    engine, asr = engine_with({3.0: ("Can you tell me about him?", 0.45), 8.0: ("Can you tell me about him?", 0.52)})
    result = await engine.decode(AUDIO, "Can you tell me", "speculative")
    assert asr.pads == [3.0, 8.0]
    assert result.tail_prob == pytest.approx(0.45)  # the turn is judged on a doubtful last word
