"""The end-of-turn policy: audio probability + the transcript's last words."""

from voxmesh_stt.policy import judge, text_kind, trailing_digit_count

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


def test_trailing_digit_count_however_whisper_writes_the_number():
    for text in ("Where is my order 4219.", "where is my order 4 2 1 9", "It is 42-19.", "my order four two one nine",
                 "my order for two one nine", "forty two nineteen", "the code is 42, 19"):
        assert trailing_digit_count(text) == 4, text
    assert trailing_digit_count("Where is my order for to one nine") == 4  # what tiny.en hears on espeak
    assert trailing_digit_count("I went to for") is None  # homophones alone are words
    assert trailing_digit_count("my phone is 555 1234") == 7
    assert trailing_digit_count("my order number is four two") == 2
    assert trailing_digit_count("I paid for 4219") == 4  # "for" before a numeral is a preposition
    assert trailing_digit_count("three hundred and four") == 1
    assert trailing_digit_count("two hundred") is None  # not a digit string
    assert trailing_digit_count("the blue one?") == 1 and trailing_digit_count("hello") is None


def test_a_number_complete_for_the_agent_is_judged_like_a_sentence():
    assert text_kind("Where is my order 4219.", (4,)) == "number"
    assert text_kind("Where is my order 4219.") == "digits"
    assert text_kind("my order number is four two", (4,)) == "digits"
    # Whisper's list commas, the last one included: the count decides, not the comma
    assert text_kind("My order number is 4, 2, 1, 9,", (4,)) == "number"
    assert text_kind("My order number is 4, 2, 1,", (4,)) == "hold"  # 3 digits: still being read
    assert text_kind("My order number is 4, 2, 1, 9,") == "hold"  # no length known: keep holding
    assert text_kind("I would like to,", (4,)) == "hold"
    assert text_kind("my phone is 555 1234", (4,)) == "digits"
    assert judge(0.9, "Where is my order 4219.", **KW).required_silence_ms == 2000
    doubted = judge(0.01, "Where is my order 4219.", complete_digit_counts=(4,), **KW).required_silence_ms
    assert 200 < doubted <= 500  # the audio model's doubt, with the weight of a closed sentence
    # a question that ends in the number: the count decides, not the flat "?" Smart Turn doubts
    assert text_kind("Where is my order for to one nine?", (4,)) == "number"
    assert text_kind("Where is my order for to one nine?") == "final"
    asked = judge(0.01, "Where is my order for to one nine?", complete_digit_counts=(4,), **KW).required_silence_ms
    assert asked == doubted
    assert judge(0.01, "Where is my order for to one nine?", **KW).required_silence_ms > 1000


def test_an_uncertain_last_word_is_no_evidence_of_a_complete_turn():
    sure = judge(0.95, "Can you tell me about him?", tail_prob=0.95, **KW)
    unsure = judge(0.95, "Can you tell me about him?", tail_prob=0.3, **KW)
    assert sure.required_silence_ms == 200 and sure.text_kind == "final"
    assert unsure.text_kind == "uncertain" and 1000 < unsure.required_silence_ms < 2000
    # hold words hold whatever the confidence
    assert judge(0.95, "I need to change the address to", tail_prob=0.3, **KW).required_silence_ms == 2000


def test_fast_silence_only_when_both_models_are_sure():
    assert judge(0.95, "Where is my parcel?", fast_silence_ms=96, **KW).required_silence_ms == 96
    assert judge(0.95, "Where is my parcel?", fast_silence_ms=96, tail_prob=0.6, **KW).required_silence_ms == 200
    assert judge(0.7, "Where is my parcel?", fast_silence_ms=96, **KW).required_silence_ms == 200
    assert judge(0.95, "where is my parcel", fast_silence_ms=96, **KW).required_silence_ms == 200  # not closed
