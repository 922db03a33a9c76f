"""Unit tests of the backend-independent text/timing helpers (no model)."""

from __future__ import annotations

from voxmesh_tts import text as T
from voxmesh_tts.backends.piper import _match_words, _split_phoneme_words


def _covers(spans, n):
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert a1 == b0 and a0 < a1


def test_segments_split_sentences_and_keep_first_short():
    text = "Sure. I can book a table for two tomorrow at seven, near the window, if you like; shall I?"
    segs = T.split_segments(text, first_limit=40, limit=60)
    _covers(segs, len(text))
    assert text[slice(*segs[0])] == "Sure. "
    # The long sentence is split at clause punctuation, never inside a word.
    for s0, s1 in segs:
        assert s1 - s0 <= 60 * 1.5
        assert s1 == len(text) or text[s1 - 1] == " "


def test_first_segment_of_long_sentence_is_split_at_a_comma():
    text = "Well, I have checked the calendar for next week, and there are three free slots on Tuesday."
    segs = T.split_segments(text, first_limit=20, limit=200)
    _covers(segs, len(text))
    assert text[slice(*segs[0])] == "Well, "
    assert len(segs) == 2  # after the first, pieces are packed up to the larger limit


def test_run_on_text_without_punctuation_is_split_at_words():
    text = " ".join(["word"] * 100)
    segs = T.split_segments(text, first_limit=30, limit=60)
    _covers(segs, len(text))
    assert all(s1 - s0 <= 60 for s0, s1 in segs)


def test_empty_and_blank_text():
    assert T.split_segments("", 10, 10) == []
    assert T.split_segments("   ", 10, 10) == [(0, 3)]


def test_plan_chunks_cut_at_word_pauses_and_cover_the_span():
    rate = 1000  # 1 sample per ms keeps the arithmetic readable
    text = "one two three four five"
    ws = T.words(text)
    # 200 ms per word, 50 ms pause after each
    timed = [T.Word(w.start, w.end, i * 250, i * 250 + 200) for i, w in enumerate(ws)]
    chunks = T.plan_chunks(1250, rate, timed, (0, len(text)), target_ms=300)
    _covers([c.span for c in chunks], len(text))
    assert chunks[0].a0 == 0 and chunks[-1].a1 == 1250
    for a, b in zip(chunks, chunks[1:]):
        assert a.a1 == b.a0
        # the cut lies in the pause, between the last word of a and the first of b
        assert a.words[-1].s1 <= a.a1 <= b.words[0].s0
        assert text[b.span[0]:].startswith(text[b.words[0].start:b.words[0].end])
    assert sum(len(c.words) for c in chunks) == len(ws)


def test_plan_chunks_never_cut_fused_words():
    text = "out of the box"
    ws = T.words(text)
    fused = T.proportional(ws[1:3], 300, 500, gaps=False)  # "of the" spoken as one
    timed = [T.Word(ws[0].start, ws[0].end, 0, 250), *fused, T.Word(ws[3].start, ws[3].end, 550, 900)]
    chunks = T.plan_chunks(900, 1000, timed, (0, len(text)), target_ms=100)
    starts = [c.words[0].start for c in chunks]
    assert ws[2].start not in starts  # no chunk starts at "the"


def test_proportional_is_ordered_and_inside_the_range():
    ws = T.words("a bb ccc dddd")
    est = T.proportional(ws, 100, 1100)
    assert est[0].s0 == 100 and est[-1].s1 <= 1100
    for a, b in zip(est, est[1:]):
        assert a.s0 <= a.s1 <= b.s0


def test_split_phoneme_words_skips_punctuation_and_stress():
    ph = list("^həlˈoʊ, wˈɜːld.$")
    words = _split_phoneme_words(ph)
    assert ["".join(ph[i] for i in w) for w in words] == ["həlˈoʊ", "wˈɜːld"]


def test_match_words_handles_numbers_and_fused_words():
    text = "It's 42 for the win"
    ws = T.words(text)
    iso = {"It's": ("ɪts",), "42": ("fɔɹɾi", "tu"), "for": ("fɔɹ",), "the": ("ðə",), "win": ("wɪn",)}
    # espeak in context: ɪts fˈɔːɹɾi tˈuː fɚðə wˈɪn -> 5 phoneme words for 5 tokens, not 1:1
    ph = [(0, 100, "ɪts"), (120, 300, "fɔɹɾi"), (320, 400, "tu"), (420, 600, "fɚðə"), (620, 800, "wɪn")]
    out, exact = _match_words(ws, ph, lambda w: iso[text[w.start:w.end]])
    by = {text[w.start:w.end]: (w.s0, w.s1) for w in out}
    assert by["42"] == (120, 400)
    assert by["for"][0] == 420 and by["the"][1] == 600 and by["for"][1] == by["the"][0]
    assert by["win"] == (620, 800)
    assert exact
