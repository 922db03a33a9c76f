"""The end-of-turn policy: audio probability + the transcript's last words."""

from voxmesh_stt.policy import judge, text_kind

KW = dict(min_silence_ms=200, max_silence_ms=2000, threshold=0.5)


def test_text_kinds():
    assert text_kind("So I was wondering if") == "hold"
    assert text_kind("I would like to...") == "hold"
    assert text_kind("Can you tell me about um") == "hold"
    assert text_kind("My order number is 4.") == "digits"
    assert text_kind("Where is my order 4219?") == "final"
    assert text_kind("Turn it on.") == "final"
    assert text_kind("Thank you very much for your help today.") == "final"
    assert text_kind("hello there") == "neutral"
    assert text_kind("") == "empty"


def test_confident_and_complete_ends_at_min_silence():
    assert judge(0.9, "Where is my parcel?", **KW).required_silence_ms == 200


def test_hold_words_and_digits_wait_the_maximum_whatever_the_audio_says():
    assert judge(0.99, "So I was wondering if", **KW).required_silence_ms == 2000
    assert judge(0.99, "my order number is four", **KW).required_silence_ms == 2000


def test_doubt_scales_the_wait():
    closed = judge(0.1, "Cancel my subscription.", **KW).required_silence_ms
    open_ = judge(0.1, "hello there", **KW).required_silence_ms
    assert 200 < closed < open_ <= 2000
    assert judge(0.0, "hello there", **KW).required_silence_ms == 2000
    assert judge(0.0, "", **KW).required_silence_ms == 2000
    assert judge(-1.0, "Thanks.", **KW).required_silence_ms < 2000  # no audio judgement: text alone


def test_a_closed_sentence_waits_longer_when_the_audio_model_is_sure_it_is_not():
    sure = judge(0.0, "I welcome to that.", **KW).required_silence_ms
    doubtful = judge(0.3, "I welcome to that.", **KW).required_silence_ms
    assert doubtful < 500 < sure <= 1100
