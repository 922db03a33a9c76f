"""The per-stream state machine: VAD windows in, speech/transcript/turn events out.

Pure of I/O: it is handed a clock and async callables for the VAD, the turn model
and the ASR (the server passes the real models behind their executors; unit tests
pass named doubles and a virtual clock). Every decision is taken on the audio
clock (samples received), so a test can feed scripted audio faster than real time
and get the same events; the wall clock only feeds the latency metrics and the
interim CPU budget.

Event semantics (see stt.proto):

- A user TURN runs from its first speech onset to its EndOfTurn and has one
  utterance_id: the onset's audio offset in ms on the caller's clock, so ids are
  unique and increasing on a session's timeline, also across a replayed stream.
- SpeechStarted fires at every VAD onset inside the turn, as soon as
  min_speech_ms of speech is seen, with the offset of the onset; SpeechStopped at
  every offset, speech_pad_ms after the last speech window, with the offset of the
  end of that window.
- Interim (when asked for) while the user speaks, and once more as soon as the
  speculative final of a pause is decoded (so the orchestrator can start a
  preemptive reply on the likely final text while the end of turn is decided);
  `stable_prefix` is a prefix of `text` that every later Interim and the Final
  keep (it is forced into the decoder).
- Exactly one Final per turn, with the whole turn's text, immediately before the
  EndOfTurn that closes the turn. Nothing of a turn is sent after its EndOfTurn.
- End of turn: each pause is judged as soon as it starts (speculative_after_ms
  of silence), and once more at min_silence_ms if that did not end it: the turn
  model on the trailing audio, fused with the transcript's last words (see
  policy.py), gives a silence requirement between min_silence_ms and
  max_silence_ms. Reasons: "model" (the judged requirement was met), "silence"
  (no turn model: min_silence_ms ends the turn), "max_wait" (max_silence_ms, the
  judgement held the turn open that long), "flush" (the caller closed its side).
  Speech that resumes before the requirement is met cancels the judgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from voxmesh.core.metrics import metric
from voxmesh_stt.policy import Judgement, judge

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512  # samples per VAD decision (32 ms)
TURN_MODEL_MAX_S = 8.0  # Smart Turn sees at most the last 8 s
# Silero's hysteresis: speech continues while the probability stays above this
# much below the onset threshold.
NEG_THRESHOLD_GAP = 0.15
# Punctuation stripped from the end of a stable prefix: it is the least stable
# part of a hypothesis ("order?" becomes "order for...").
_TRAILING_PUNCT = ".,?!;:-"


# ---------------------------------------------------------------- events out
@dataclass(frozen=True)
class SpeechStarted:
    utterance_id: int
    audio_offset_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    utterance_id: int
    audio_offset_ms: int


@dataclass(frozen=True)
class Interim:
    utterance_id: int
    text: str
    stable_prefix: str


@dataclass(frozen=True)
class Final:
    utterance_id: int
    text: str
    start_ms: int
    end_ms: int
    decode_seconds: float


@dataclass(frozen=True)
class EndOfTurn:
    utterance_id: int
    probability: float
    audio_offset_ms: int
    reason: str


Event = SpeechStarted | SpeechStopped | Interim | Final | EndOfTurn


# ---------------------------------------------------------------- config and injected parts
@dataclass(frozen=True)
class StreamConfig:
    """Effective settings of one stream (service defaults merged with the caller's)."""

    stream_offset_ms: int = 0
    interim_results: bool = False
    vad_threshold: float = 0.5
    min_speech_ms: int = 160
    min_silence_ms: int = 200
    max_silence_ms: int = 2000
    eou_threshold: float = 0.5
    preroll_ms: int = 300
    speech_pad_ms: int = 96
    speculative_after_ms: int = 32
    interim_first_ms: int = 400
    interim_interval_ms: int = 400
    interim_cpu_share: float = 0.5
    max_window_s: float = 24.0
    false_eou_window_ms: int = 1500
    # Decode jobs (running + waiting) in the process above which interims are skipped.
    max_backlog: int = 1
    # "fused": turn model + transcript (policy.judge); "audio": the turn model alone,
    # as Pipecat uses Smart Turn (complete -> min_silence_ms, else max_silence_ms).
    turn_policy: str = "fused"
    # Number lengths (digits) complete for this agent (TurnSettings.complete_digit_counts).
    complete_digit_counts: tuple[int, ...] = ()
    # Silence that ends a turn both models are sure of (policy.judge), at most
    # min_silence_ms.
    fast_silence_ms: int = 200


@dataclass(frozen=True)
class Transcript:
    """What a decode callable returns."""

    text: str
    seconds: float
    # (word, decoder probability) of the last words, oldest first; empty: unknown.
    tail: tuple[tuple[str, float], ...] = ()

    @property
    def tail_prob(self) -> float:
        """The decoder's probability of the last word (1.0 when not known)."""
        return self.tail[-1][1] if self.tail else 1.0


# decode(audio float32 16 kHz, prefix, kind) -> Transcript; kind is "interim",
# "speculative" or "final" (the server maps it to a priority and a beam).
DecodeFn = Callable[[np.ndarray, str, str], Awaitable[Transcript]]
# turn(audio float32 16 kHz, at most 8 s) -> probability that the turn is complete.
TurnFn = Callable[[np.ndarray], Awaitable[float]]
# vad(float32 samples) -> speech probability of each 512-sample window they complete.
VadFn = Callable[[np.ndarray], Awaitable[np.ndarray]]


def _words(text: str) -> list[str]:
    return ["".join(ch for ch in w.lower() if ch.isalnum() or ch == "'") for w in text.split()]


def stable_between(previous: str, current: str, floor: str) -> str:
    """The stable prefix after a decode: the words `previous` and `current` agree on,
    minus the newest word of `current` (likely cut mid-word), never shorter than
    `floor` (the prefix already promised). Returned as it is spelled in `current`."""
    if not current.startswith(floor):
        return floor
    prev_w, cur_tokens = _words(previous), current.split()
    cur_w = _words(current)
    n = 0
    while n < min(len(prev_w), len(cur_w) - 1) and prev_w[n] == cur_w[n]:
        n += 1
    candidate = " ".join(cur_tokens[:n]).rstrip(_TRAILING_PUNCT)
    if len(candidate) > len(floor) and candidate.startswith(floor):
        return candidate
    return floor


@dataclass
class _Turn:
    utterance_id: int
    start_sample: int  # first sample of the turn audio (onset minus pre-roll)
    onset_sample: int
    onset_wall: float
    seg_start: int  # first sample not yet frozen into `committed`
    committed: str = ""  # text of audio before seg_start (turns longer than a window)
    stable: str = ""  # stable prefix of the current segment's text
    last_text: str = ""  # latest hypothesis of the segment
    emitted_text: str = ""
    interim_emitted: bool = False
    last_speech_end: int = 0
    last_speech_end_wall: float = 0.0
    pause_checked: bool = False  # the current pause has been (or is being) judged
    pause_id: int = 0  # bumps at every onset and offset: stale judgements are dropped
    judge_task: asyncio.Task | None = None
    judge2_task: asyncio.Task | None = None
    second_look: bool = False  # stage 2 of the judgement was started
    judged_stage: int = 0  # the stage whose verdict is in force
    required_silence_ms: int | None = None  # from the judgement of the current pause
    text_kind: str = ""
    probability: float = -1.0
    speculative: asyncio.Task | None = None
    speculative_end: int = 0
    interim_task: asyncio.Task | None = None
    interim_audio_end: int = 0
    next_interim_wall: float = 0.0
    closing: bool = False
    pauses: list[int] = field(default_factory=list)  # sample index of each speech end
    window_probs: list[float] = field(default_factory=list)  # VAD probability per window, last few s

    def text_with(self, segment_text: str) -> str:
        return f"{self.committed} {segment_text}".strip() if self.committed else segment_text

    def stable_prefix(self) -> str:
        return self.text_with(self.stable) if self.stable or self.committed else ""


class TurnStream:
    def __init__(
        self,
        config: StreamConfig,
        *,
        vad: VadFn,
        decode: DecodeFn,
        turn_model: TurnFn | None,
        emit: Callable[[Event], None],
        clock: Callable[[], float],
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.cfg = config
        self._vad = vad
        self._decode = decode
        self._turn_model = turn_model
        self._emit = emit
        self._clock = clock
        self._backlog = backlog
        self._pending_bytes = b""
        self._received = 0  # samples received
        self._scored = 0  # samples covered by VAD windows
        # Audio kept: the turn's audio while a turn is open, the pre-roll otherwise.
        # Appended every 20 ms and read as slices: a buffer with spare capacity
        # (amortized O(1) appends) instead of a concatenation per piece.
        self._store = np.zeros(4 * SAMPLE_RATE, dtype=np.float32)
        self._len = 0  # valid samples in _store
        self._buf_start = 0  # absolute sample index of _store[0]
        self._preroll = config.preroll_ms * SAMPLE_RATE // 1000
        self._neg = max(0.0, config.vad_threshold - NEG_THRESHOLD_GAP)
        self._in_speech = False
        self._cand_start: int | None = None
        self._cand_windows = 0
        self._min_speech_windows = max(1, math.ceil(config.min_speech_ms * SAMPLE_RATE / 1000 / WINDOW))
        self._turn: _Turn | None = None
        self._last_eou: tuple[int, str] | None = None  # (sample, reason) of the last turn end
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        # Held while audio windows are processed and while a judgement that came
        # back from its task is applied, so a turn is never ended twice.
        self._lock = asyncio.Lock()
        self.turns = 0

    # ------------------------------------------------------------ clock helpers
    def offset_ms(self, sample: int) -> int:
        return self.cfg.stream_offset_ms + sample * 1000 // SAMPLE_RATE

    def _ms(self, samples: int) -> float:
        return samples * 1000 / SAMPLE_RATE

    def _audio(self, start: int, end: int) -> np.ndarray:
        """A view of absolute samples [start, end) that are still kept: copy it before
        handing it to another thread or keeping it across an append."""
        lo = max(start, self._buf_start) - self._buf_start
        hi = max(lo, min(end, self._buf_start + self._len) - self._buf_start)
        return self._store[lo:hi]

    def _append(self, samples: np.ndarray) -> None:
        need = self._len + samples.size
        if need > self._store.size:
            grown = np.zeros(max(need, 2 * self._store.size), dtype=np.float32)
            grown[: self._len] = self._store[: self._len]
            self._store = grown
        self._store[self._len : need] = samples
        self._len = need

    @property
    def audio_seconds(self) -> float:
        return self._received / SAMPLE_RATE

    # ------------------------------------------------------------ input
    async def feed(self, pcm: bytes) -> None:
        """PCM s16le mono 16 kHz of any length (odd byte counts are buffered)."""
        if self._closed:
            return
        data = self._pending_bytes + pcm
        usable = len(data) - (len(data) % 2)
        self._pending_bytes = data[usable:]
        if not usable:
            return
        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        self._received += samples.size
        self._append(samples)
        metric("voxmesh_stt_audio_seconds_total").inc(samples.size / SAMPLE_RATE)
        async with self._lock:
            probs = await self._vad(samples)
            for p in probs:
                self._scored += WINDOW
                await self._on_window(float(p), self._scored)
            self._trim()
            await self._maybe_freeze_segment()
            self._maybe_interim()

    async def finish(self) -> None:
        """The caller closed its side: close an open turn (reason "flush"), then stop."""
        if self._closed:
            return
        async with self._lock:
            t = self._turn
            if t is not None:
                if self._in_speech:
                    self._in_speech = False
                    self._emit(SpeechStopped(t.utterance_id, self.offset_ms(t.last_speech_end)))
                await self._end_turn(self._received, "flush")
        await self.aclose()

    async def aclose(self) -> None:
        """Stop without flushing: cancel every decode this stream started."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------ VAD windows
    async def _on_window(self, p: float, end: int) -> None:
        cfg = self.cfg
        start = end - WINDOW
        t = self._turn
        if t is not None:
            t.window_probs.append(p)
            if len(t.window_probs) > 4 * SAMPLE_RATE // WINDOW:
                del t.window_probs[: SAMPLE_RATE // WINDOW]
        if self._in_speech:
            assert t is not None
            if p >= self._neg:
                if t.pause_checked:
                    # a dip inside a word, not a pause: its decode and judgement are stale
                    self._new_pause(t)
                t.last_speech_end = end
                t.last_speech_end_wall = self._clock()
                return
            silent_ms = self._ms(end - t.last_speech_end)
            if silent_ms >= cfg.speech_pad_ms:
                self._in_speech = False
                t.pauses.append(t.last_speech_end)
                self._emit(SpeechStopped(t.utterance_id, self.offset_ms(t.last_speech_end)))
            if silent_ms >= min(cfg.speculative_after_ms, cfg.speech_pad_ms) and not t.pause_checked:
                self._begin_pause(t, end)
            return

        if p >= cfg.vad_threshold:
            if self._cand_start is None:
                self._cand_start = start
                self._cand_windows = 0
            self._cand_windows += 1
            if self._cand_windows >= self._min_speech_windows:
                self._onset(self._cand_start, end)
                return
        elif p < self._neg or (
            self._cand_start is not None and end - self._cand_start > (3 * self._min_speech_windows + 2) * WINDOW
        ):
            # Below the offset threshold, or hovering between the thresholds for too
            # long without confirming (steady noise): not an onset. Without the
            # second rule a noisy room would hold every turn open forever.
            self._cand_start = None
            self._cand_windows = 0

        # Silence inside an open turn: is the turn over? Not while a new onset is
        # being confirmed: that would cut the speaker off as they resume.
        if t is not None and self._cand_start is None and not t.closing and not self._in_speech:
            silence_ms = self._ms(end - t.last_speech_end)
            if not t.pause_checked:
                self._begin_pause(t, end)  # (a pause the in-speech branch did not see start)
            if silence_ms >= cfg.max_silence_ms:
                await self._end_turn(end, "max_wait")
            elif self._turn_model is None:
                if silence_ms >= cfg.min_silence_ms:
                    await self._end_turn(end, "silence")
            elif t.required_silence_ms is not None and silence_ms >= t.required_silence_ms:
                # (a turn both models are sure of may end before min_silence_ms)
                await self._end_turn(end, "model")
            elif silence_ms >= cfg.min_silence_ms:
                self._maybe_second_look(t, end)

    def _onset(self, onset: int, end: int) -> None:
        self._cand_start = None
        self._in_speech = True
        now = self._clock()
        t = self._turn
        if t is None:
            if self._last_eou is not None:
                last_sample, reason = self._last_eou
                self._last_eou = None
                if reason in ("model", "silence") and self._ms(onset - last_sample) < self.cfg.false_eou_window_ms:
                    # The speaker went on right after we ended their turn: a cut-off.
                    metric("voxmesh_eou_suspect_total").labels("false").inc()
            onset_wall = now - (end - onset) / SAMPLE_RATE
            t = _Turn(
                utterance_id=self.offset_ms(onset),
                start_sample=max(self._buf_start, onset - self._preroll, 0),
                onset_sample=onset,
                onset_wall=onset_wall,
                seg_start=max(self._buf_start, onset - self._preroll, 0),
            )
            t.next_interim_wall = 0.0
            self._turn = t
            self.turns += 1
        else:
            # Speech resumed inside the turn: the speculative final and the
            # judgement of the pause are stale.
            self._new_pause(t)
        t.last_speech_end = end
        t.last_speech_end_wall = now
        self._emit(SpeechStarted(t.utterance_id, self.offset_ms(onset)))

    def _trim(self) -> None:
        """Keep the open turn's audio (from its segment start), else only the pre-roll."""
        # Two windows of slack: a VAD window can start before the chunk that completed it.
        keep_from = self._turn.seg_start if self._turn is not None else self._received - self._preroll - 2 * WINDOW
        if self._cand_start is not None:
            keep_from = min(keep_from, self._cand_start - self._preroll)
        drop = min(max(0, keep_from - self._buf_start), self._len)
        # Shift only once the dead part is large: a copy per turn, not per piece.
        if drop and (drop >= self._store.size // 2 or drop == self._len):
            self._store[: self._len - drop] = self._store[drop : self._len]
            self._len -= drop
            self._buf_start += drop

    # ------------------------------------------------------------ end of turn
    def _begin_pause(self, t: _Turn, end: int) -> None:
        """speculative_after_ms of silence: decode the turn so far and judge the pause
        at once, both in the background. The judgement is applied once the silence
        also reaches min_silence_ms, so neither model is on the critical path unless
        it takes longer than that."""
        t.pause_checked = True
        self._start_speculative(t, end)
        if self._turn_model is not None:
            t.judge_task = self._spawn(self._judge(t, t.pause_id, end, 1), "stt-judge")

    def _maybe_second_look(self, t: _Turn, end: int) -> None:
        """At min_silence_ms, judge the pause once more when the first look asked for
        a longer wait that more trailing silence could shorten: only once its
        verdict is in (a second Smart Turn run while the speculative decode is
        still running would only slow that decode down on a small machine), and
        not when the text alone decided (hold, digits, uncertain words: Smart
        Turn cannot change those)."""
        if t.second_look or t.judged_stage < 1 or t.required_silence_ms is None:
            return
        if t.required_silence_ms <= self.cfg.min_silence_ms or t.text_kind in ("hold", "digits", "uncertain"):
            return
        t.second_look = True
        t.judge2_task = self._spawn(self._judge(t, t.pause_id, end, 2), "stt-judge2")

    def _new_pause(self, t: _Turn) -> None:
        """Speech resumed: what was started for the pause is stale."""
        t.pause_id += 1
        t.pause_checked = False
        t.second_look = False
        t.judged_stage = 0
        t.required_silence_ms = None
        self._cancel(t.judge_task)
        self._cancel(t.judge2_task)
        t.judge_task = t.judge2_task = None
        self._cancel(t.speculative)
        t.speculative = None

    async def _judge(self, t: _Turn, pause_id: int, end: int, stage: int) -> None:
        """Judge the pause at sample `end`: the turn model on the trailing audio and
        the transcript so far (the speculative final, which the Final needs before
        EndOfTurn anyway), run concurrently. Stage 1 runs as the pause starts, stage 2
        at min_silence_ms when stage 1 did not end the turn there: Smart Turn reads
        ~100 ms of trailing silence as less complete than ~200 ms, so the second look
        rescues complete turns that the first one doubted. A later stage's verdict
        replaces an earlier one."""
        audio = self._audio(max(t.start_sample, end - int(TURN_MODEL_MAX_S * SAMPLE_RATE)), end).copy()
        began = self._clock()
        model_task = asyncio.ensure_future(self._turn_model(audio))
        text_ms = 0.0
        try:
            text, tail_prob = t.last_text, 1.0
            if t.speculative is not None:
                try:
                    # shield: a cancelled judgement must not cancel the final's decode
                    spec = await asyncio.shield(t.speculative)
                    text, tail_prob = spec.text, spec.tail_prob
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # this judgement itself was cancelled
                    text = t.last_text  # only the decode was (a segment was frozen)
                except Exception:
                    text = t.last_text  # logged when the final is taken
            text_ms = (self._clock() - began) * 1000
            try:
                p_audio = float(await model_task)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("turn model failed; judging on the transcript alone")
                metric("voxmesh_errors_total").labels("turn_model").inc()
                p_audio = -1.0
        finally:
            model_task.cancel()
        cfg = self.cfg
        if cfg.turn_policy == "audio":
            complete = p_audio >= cfg.eou_threshold
            verdict = Judgement(p_audio, cfg.min_silence_ms if complete else cfg.max_silence_ms, "audio")
        else:
            verdict = judge(p_audio, t.text_with(text), min_silence_ms=cfg.min_silence_ms, max_silence_ms=cfg.max_silence_ms,
                            threshold=cfg.eou_threshold, tail_prob=tail_prob, complete_digit_counts=cfg.complete_digit_counts,
                            fast_silence_ms=cfg.fast_silence_ms)
        async with self._lock:
            if self._turn is not t or t.closing or t.pause_id != pause_id or self._closed or stage < t.judged_stage:
                return
            t.judged_stage = stage
            t.probability = verdict.probability
            t.required_silence_ms = verdict.required_silence_ms
            t.text_kind = verdict.text_kind
            silence_ms = self._ms(self._scored - t.last_speech_end)
            log.debug("pause judged", extra={"stage": stage, "p_audio": round(p_audio, 3), "p": verdict.probability,
                                            "kind": verdict.text_kind, "tail_prob": round(tail_prob, 3),
                                            "required_ms": verdict.required_silence_ms, "silence_ms": round(silence_ms),
                                            # what the verdict waited for, from the pause's start (wall ms)
                                            "text_ms": round(text_ms), "verdict_ms": round((self._clock() - began) * 1000)})
            if self._in_speech or self._cand_start is not None:
                return
            if silence_ms >= verdict.required_silence_ms:
                reason = "model" if verdict.required_silence_ms < self.cfg.max_silence_ms else "max_wait"
                await self._end_turn(self._scored, reason)
            elif silence_ms >= cfg.min_silence_ms:
                self._maybe_second_look(t, self._scored)

    # ------------------------------------------------------------ decoding
    def _spawn(self, coro: Awaitable, name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def _cancel(task: asyncio.Task | None) -> None:
        if task is not None and not task.done():
            task.cancel()

    def _start_speculative(self, t: _Turn, end: int) -> None:
        """Decode the turn so far as soon as the speaker pauses: if the turn ends in
        this pause, this is the final, ready by the time the end of turn is decided."""
        self._cancel(t.speculative)
        # An interim still waiting would decode less audio than this: drop it.
        if t.interim_task is not None and not t.interim_task.done():
            t.interim_task.cancel()
            log.debug("interim in flight at a pause", extra={"utterance_id": t.utterance_id})
        audio = self._audio(t.seg_start, end).copy()
        t.speculative = self._spawn(self._decode(audio, t.stable, "speculative"), "stt-speculative")
        t.speculative_end = end
        t.speculative.add_done_callback(lambda task, t=t, end=end: self._speculative_interim(t, task, end))

    def _speculative_interim(self, t: _Turn, task: asyncio.Task, end: int) -> None:
        """Say the speculative final as an interim the moment it is ready: the
        speaker has paused, so it is likely the turn's text, and the
        orchestrator starts generating a reply on it (preemptive generation)
        while the end of turn is still being decided."""
        if task.cancelled() or task.exception() is not None or not self.cfg.interim_results:
            return
        # (speech that resumed since has replaced or cleared t.speculative)
        if t.closing or self._turn is not t or self._closed or t.speculative is not task:
            return
        text = task.result().text.strip()
        if not text or not text.startswith(t.stable):
            return
        full = t.text_with(text)
        if full == t.emitted_text:
            return
        t.emitted_text = full
        self._emit(Interim(t.utterance_id, full, t.stable_prefix()))

    def _maybe_interim(self) -> None:
        t = self._turn
        cfg = self.cfg
        if not cfg.interim_results or t is None or t.closing or not self._in_speech:
            return
        if t.interim_task is not None and not t.interim_task.done():
            return  # one in flight per stream: never queue stale work behind it
        end = self._scored
        if t.last_speech_end < end:
            return  # the last window was not speech: a speculative final may be next, keep the executor free
        if self._ms(end - t.onset_sample) < cfg.interim_first_ms:
            return
        if t.interim_audio_end and self._ms(end - t.interim_audio_end) < cfg.interim_interval_ms:
            return
        now = self._clock()
        if now < t.next_interim_wall:
            return  # this stream used its CPU share
        if self._backlog() > cfg.max_backlog:
            return  # the executor is behind: skip rather than queue
        t.interim_audio_end = end
        audio = self._audio(t.seg_start, end).copy()
        t.interim_task = self._spawn(self._run_interim(t, audio), "stt-interim")

    async def _run_interim(self, t: _Turn, audio: np.ndarray) -> None:
        prefix = t.stable
        try:
            result = await self._decode(audio, prefix, "interim")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("interim decode failed")
            metric("voxmesh_errors_total").labels("decode").inc()
            return
        now = self._clock()
        share = max(0.05, min(1.0, self.cfg.interim_cpu_share))
        t.next_interim_wall = now + result.seconds * (1.0 / share - 1.0)
        if t.closing or self._turn is not t or self._closed or t.stable != prefix:
            return  # the turn moved on while this decoded
        text = result.text.strip()
        if not text or not text.startswith(t.stable):
            return
        t.stable = stable_between(t.last_text, text, t.stable)
        t.last_text = text
        full = t.text_with(text)
        if full == t.emitted_text:
            return
        t.emitted_text = full
        if not t.interim_emitted:
            t.interim_emitted = True
            metric("voxmesh_stt_interim_seconds").observe(max(0.0, now - t.onset_wall))
        self._emit(Interim(t.utterance_id, full, t.stable_prefix()))

    async def _maybe_freeze_segment(self) -> None:
        """Whisper sees at most 30 s: when a turn's undecoded audio grows past
        max_window_s, decode its older part once (cut at the latest pause when there
        is one) and keep that text fixed."""
        t = self._turn
        if t is None or t.closing:
            return
        limit = int(self.cfg.max_window_s * SAMPLE_RATE)
        if self._scored - t.seg_start <= limit:
            return
        pauses = [p for p in t.pauses if p - t.seg_start >= limit // 3]
        if pauses:
            cut = pauses[-1]  # a word boundary: neither side gets half a word
        elif self._scored - t.seg_start > limit + limit // 6:
            # No pause for a long time: cut at the quietest window of the last second.
            recent = t.window_probs[-(SAMPLE_RATE // WINDOW) :]
            quietest = int(np.argmin(recent)) if recent else len(recent) - 1
            cut = self._scored - (len(recent) - quietest) * WINDOW + WINDOW // 2
        else:
            return  # wait a little for a pause (max_window_s leaves Whisper's 30 s some room)
        audio = self._audio(t.seg_start, cut).copy()
        self._cancel(t.interim_task)
        try:
            result = await self._decode(audio, t.stable, "final")
            text = result.text.strip()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("segment decode failed")
            metric("voxmesh_errors_total").labels("decode").inc()
            text = t.last_text
        t.committed = t.text_with(text)
        t.seg_start = cut
        t.stable = ""
        t.last_text = ""
        if t.speculative is not None and t.speculative_end > 0:
            self._cancel(t.speculative)
            t.speculative = None

    async def _final_text(self, t: _Turn, end: int) -> tuple[str, float]:
        spec = t.speculative
        if spec is not None and not spec.cancelled() and t.speculative_end >= t.last_speech_end:
            try:
                result = await spec
                return result.text.strip(), result.seconds
            except asyncio.CancelledError:
                if self._closed:
                    raise
            except Exception:
                log.exception("speculative decode failed; decoding again")
                metric("voxmesh_errors_total").labels("decode").inc()
        self._cancel(spec)
        # Include a little of the silence after the last word: Whisper drops a
        # word that ends exactly at the clip's edge.
        stop = min(end, t.last_speech_end + SAMPLE_RATE // 4)
        audio = self._audio(t.seg_start, stop).copy()
        try:
            result = await self._decode(audio, t.stable, "final")
            return result.text.strip(), result.seconds
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("final decode failed; using the last interim")
            metric("voxmesh_errors_total").labels("decode").inc()
            return t.last_text, 0.0

    async def _end_turn(self, end: int, reason: str) -> None:
        t = self._turn
        assert t is not None
        t.closing = True
        decided_wall = self._clock()
        metric("voxmesh_eou_total").labels(reason).inc()
        if reason != "flush":
            metric("voxmesh_eou_delay_seconds").observe(max(0.0, decided_wall - t.last_speech_end_wall))
        if reason == "max_wait":
            # The model held the turn open and the speaker did not go on.
            metric("voxmesh_eou_suspect_total").labels("late").inc()
        self._cancel(t.interim_task)
        for task in (t.judge_task, t.judge2_task):
            if task is not asyncio.current_task():
                self._cancel(task)
        text, seconds = await self._final_text(t, end)
        if text and not text.startswith(t.stable):
            text = t.stable  # cannot happen with a forced prefix; keep the promise anyway
        full = t.text_with(text)
        self._emit(
            Final(
                utterance_id=t.utterance_id,
                text=full,
                start_ms=self.offset_ms(t.onset_sample),
                end_ms=self.offset_ms(t.last_speech_end),
                decode_seconds=round(seconds, 4),
            )
        )
        self._emit(EndOfTurn(t.utterance_id, t.probability, self.offset_ms(end), reason))
        log.info(
            "turn ended",
            extra={
                "utterance_id": t.utterance_id,
                "reason": reason,
                "probability": round(t.probability, 3),
                "text_kind": t.text_kind,
                "words": len(full.split()),
                "eou_delay_ms": round((decided_wall - t.last_speech_end_wall) * 1000),
            },
        )
        if reason != "flush":
            metric("voxmesh_stt_final_seconds").observe(max(0.0, self._clock() - t.last_speech_end_wall))
        self._turn = None
        self._last_eou = (end, reason)
        self._trim()
