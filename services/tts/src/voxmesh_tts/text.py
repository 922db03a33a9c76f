"""Backend-independent text and timing helpers: where to split a clause before
synthesis, which words it has, how to cut segment audio into chunks at word
boundaries, and the proportional (character-count) timing estimate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends after . ! ? (and closing quotes/brackets) followed by whitespace.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
# Clause punctuation inside a sentence where a pause is natural.
_CLAUSE_END = re.compile(r"(?:[,;:]|\s[—–-])\s+")
_WORD = re.compile(r"\S+")
# Segments longer than this are split at word boundaries even without punctuation,
# so one run-on clause cannot stall first audio indefinitely.
_HARD_FACTOR = 1.5


@dataclass(frozen=True)
class Word:
    start: int  # char offsets into the clause text
    end: int
    s0: int = 0  # sample offsets into the segment audio
    s1: int = 0


def words(text: str, start: int = 0, end: int | None = None) -> list[Word]:
    """Whitespace-separated tokens of text[start:end], offsets into `text`."""
    end = len(text) if end is None else end
    return [Word(m.start() + start, m.end() + start) for m in _WORD.finditer(text[start:end])]


def _cuts(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[int]:
    return [m.end() + start for m in pattern.finditer(text[start:end]) if m.end() + start < end]


def _pack(bounds: list[int], start: int, end: int, limit: int, first_limit: int) -> list[tuple[int, int]]:
    """Greedily group the pieces between cut points `bounds` into spans <= limit
    (first span <= first_limit) where possible; a single piece may exceed it."""
    points = [start, *bounds, end]
    out: list[tuple[int, int]] = []
    seg_start = start
    for i in range(1, len(points)):
        cap = first_limit if not out else limit
        # Close the segment before this piece if adding it would overflow.
        if points[i] - seg_start > cap and points[i - 1] > seg_start:
            out.append((seg_start, points[i - 1]))
            seg_start = points[i - 1]
    out.append((seg_start, end))
    return out


def split_segments(text: str, first_limit: int, limit: int) -> list[tuple[int, int]]:
    """Split a clause into synthesis segments covering [0, len(text)) contiguously.

    Every sentence is its own segment (a model call per sentence anyway); a sentence
    longer than the limit is split at commas/semicolons/dashes, and only a run-on
    piece beyond 1.5x the limit at plain word boundaries. The first segment uses the
    smaller `first_limit`: it decides how soon the first audio exists.
    """
    if not text:
        return []
    sentences = _pack(_cuts(text, 0, len(text), _SENTENCE_END), 0, len(text), 0, 0)
    out: list[tuple[int, int]] = []
    for s0, s1 in sentences:
        cap = first_limit if not out else limit
        if s1 - s0 <= cap:
            out.append((s0, s1))
            continue
        for c0, c1 in _pack(_cuts(text, s0, s1, _CLAUSE_END), s0, s1, limit, cap):
            cap = first_limit if not out else limit
            if c1 - c0 <= cap * _HARD_FACTOR:
                out.append((c0, c1))
            else:
                out.extend(_pack(_cuts(text, c0, c1, re.compile(r"\s+")), c0, c1, limit, cap))
    return out


def proportional(ws: list[Word], s0: int, s1: int, gaps: bool = True) -> list[Word]:
    """Estimate word sample ranges inside speech [s0, s1) by character counts (each
    word weighs its length plus one for the gap after it). gaps=False makes the
    ranges touch: words spoken as one (fused) must never be cut apart."""
    if not ws:
        return []
    weights = [w.end - w.start + 1 for w in ws]
    total = sum(weights)
    out, acc = [], 0
    for w, wt in zip(ws, weights):
        a = s0 + (s1 - s0) * acc // total
        acc += wt
        # The "+1" share is the pause after the word, unless the words are fused.
        b = s0 + (s1 - s0) * (acc - 1 if gaps else acc) // total
        out.append(Word(w.start, w.end, a, max(a, b)))
    return out


@dataclass(frozen=True)
class PlannedChunk:
    a0: int  # samples [a0, a1) of the segment audio
    a1: int
    span: tuple[int, int]
    words: tuple[Word, ...]


def plan_chunks(n_samples: int, rate: int, ws: list[Word], span: tuple[int, int], target_ms: int) -> list[PlannedChunk]:
    """Cut one segment's audio into chunks of about target_ms at word boundaries.

    A cut between two words falls in the middle of the pause between them, so no
    chunk starts or ends inside a word; the text span of a chunk runs from its first
    word to the first word of the next chunk (trailing spaces and punctuation belong
    to the chunk before). The last chunk takes the rest of the segment.
    """
    if n_samples <= 0:
        return []
    target = max(1, rate * target_ms // 1000)
    timed = sorted((w for w in ws), key=lambda w: w.start)
    chunks: list[PlannedChunk] = []
    a0, c0, first = 0, span[0], 0
    for i in range(len(timed) - 1):
        nxt = timed[i + 1]
        # Never cut before an unspoken token (lone punctuation) or between words with
        # no pause at all (fused in speech, e.g. "of the").
        if nxt.s1 <= nxt.s0 or nxt.s0 <= timed[i].s1:
            continue
        cut = min(max((timed[i].s1 + nxt.s0) // 2, a0), n_samples)
        # Cut when this chunk is long enough and the rest is not a tiny tail.
        if cut - a0 >= target and n_samples - cut >= target // 3:
            chunks.append(PlannedChunk(a0, cut, (c0, nxt.start), tuple(timed[first : i + 1])))
            a0, c0, first = cut, nxt.start, i + 1
    chunks.append(PlannedChunk(a0, n_samples, (c0, span[1]), tuple(timed[first:])))
    return chunks
