"""Agent audio on its way to the user: a queue of synthesized chunks, paced
out in 20 ms frames, that can pause, resume and flush without clicks, and that
knows which characters of which clause the user has heard.

Everything here runs on the event loop (no locks): the WebRTC track pulls one
frame per tick, the session pushes chunks and commands.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from voxmesh.core.metrics import metric
from voxmesh_edge.audio import SILENCE, WEBRTC_FRAME_SAMPLES, WEBRTC_RATE, fade

log = logging.getLogger(__name__)

SAMPLES_PER_MS = WEBRTC_RATE // 1000


@dataclass
class Segment:
    """One tts chunk, resampled for WebRTC, with the clause text it speaks."""

    turn_id: str
    clause_id: int
    pcm: np.ndarray                      # int16 mono at 48 kHz
    span: tuple[int, int]                # [start, end) chars of the clause text
    words: list[tuple[int, int, int, int]] = field(default_factory=list)  # (start_char, end_char, start_ms, end_ms)
    clause_text: str = ""
    clause_done: bool = False            # last chunk of its clause
    pos: int = 0                         # samples already played

    def heard_chars(self) -> int:
        """Characters of the clause heard once `pos` samples of this chunk played."""
        start, end = self.span
        if self.pos >= self.pcm.size:
            return end
        played_ms = self.pos / SAMPLES_PER_MS
        if self.words:
            heard = start
            for w_start, w_end, _s_ms, e_ms in self.words:
                if e_ms <= played_ms:
                    heard = max(heard, w_end)
            return heard
        # Proportional estimate, cut back to a word boundary the user heard whole.
        guess = start + int((end - start) * self.pos / max(1, self.pcm.size))
        text = self.clause_text
        if not text or guess <= start:
            return start
        cut = text.rfind(" ", start, guess + 1)
        return cut if cut > start else start


Progress = Callable[[str, int, int, int, bool], None]  # turn_id, clause_id, heard_chars, played_ms, clause_done


class Playout:
    def __init__(self, on_progress: Progress, on_first_audio: Callable[[str], None], fade_ms: int = 8) -> None:
        self._queue: deque[Segment] = deque()
        self._on_progress = on_progress
        self._on_first_audio = on_first_audio
        self._fade = max(1, fade_ms * SAMPLES_PER_MS)
        self._started_turns: set[str] = set()
        self._clause_ms: dict[tuple[str, int], float] = {}
        self.paused = False
        self._fade_in = False
        self._fade_out_pending = False
        self.on_stopped: Callable[[], None] | None = None  # called when a pause/flush made the output silent
        self.on_output: Callable[[np.ndarray], None] | None = None  # every frame sent (the echo guard listens)
        # A track that skips idle ticks (media.PacedOpusTrack with DTX) tells
        # the listener about them in one call: `on_silence(frames)` stands for
        # that many `on_output(SILENCE)` calls (None: it makes those calls).
        self.on_silence: Callable[[int], None] | None = None
        # Set by such a track while it sleeps through idle ticks: called when
        # the playout stops being idle (audio queued, or resumed), so that the
        # track is back on the grid for the very next tick.
        self.on_wake: Callable[[], None] | None = None

    @property
    def queued_ms(self) -> float:
        return sum(s.pcm.size - s.pos for s in self._queue) / SAMPLES_PER_MS

    @property
    def active_turn(self) -> str | None:
        return self._queue[0].turn_id if self._queue else None

    @property
    def idle(self) -> bool:
        """next_frame() returns SILENCE, with no side effect, until enqueue()
        or resume() (on_wake) is called: nothing queued or paused, and no fade
        pending."""
        return not self._fade_out_pending and (self.paused or not self._queue)

    def holds(self, samples: int) -> bool:
        """At least `samples` more are queued to play back to back from the
        next frame on (not paused, no fade-out pending): a packetizer may take
        them ahead of their time."""
        if self.paused or self._fade_out_pending:
            return False
        for seg in self._queue:
            samples -= seg.pcm.size - seg.pos
            if samples <= 0:
                return True
        return False

    def is_audible(self) -> bool:
        """Agent audio is going out right now (or is queued and not paused)."""
        return bool(self._queue) and not self.paused

    def enqueue(self, seg: Segment) -> None:
        self._queue.append(seg)
        if self.on_wake is not None and not self.paused:
            self.on_wake()

    def pause(self) -> bool:
        """Stop output at the next tick with a short fade; keep the queue."""
        if self.paused:
            return False
        was_audible = self.is_audible()
        self.paused = True
        self._fade_out_pending = was_audible
        if not was_audible and self.on_stopped:
            self.on_stopped()
        return was_audible

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._fade_in = True
            if self.on_wake is not None and self._queue:
                self.on_wake()

    def flush(self, turn_id: str | None = None) -> None:
        """Drop queued audio (of one turn, or all), fading out what is playing."""
        playing = self.is_audible()
        if turn_id is None:
            self._queue.clear()
        else:
            self._queue = deque(s for s in self._queue if s.turn_id != turn_id)
        if playing and not self._queue:
            self._fade_out_pending = True
        if not self._queue:
            self.paused = False

    def next_frame(self, frames: int = 1) -> np.ndarray:
        """The next 20 ms of output (audio.SILENCE, read-only, when idle or
        paused), or the next `frames` x 20 ms in one step (a packetizer that
        checked `holds` first: one progress report for all of it)."""
        n = WEBRTC_FRAME_SAMPLES * frames
        if self._fade_out_pending:
            # One short ramp from where the audio was, then silence.
            self._fade_out_pending = False
            tail = self._take(self._fade, report=True) if self._queue else np.zeros(0, np.int16)
            out = np.zeros(n, np.int16)
            if tail.size:
                out[: tail.size] = fade(tail, out=True)
            if self.on_stopped:
                self.on_stopped()
            return out
        if self.paused or not self._queue:
            return SILENCE if frames == 1 else np.zeros(n, np.int16)
        out = self._take(n, report=True)
        if self._fade_in:
            self._fade_in = False
            k = min(self._fade, out.size)
            out[:k] = fade(out[:k], out=False)
        if out.size < n:
            out = np.concatenate([out, np.zeros(n - out.size, np.int16)])
        return out

    def _take(self, n: int, report: bool) -> np.ndarray:
        parts: list[np.ndarray] = []
        need = n
        while need > 0 and self._queue:
            seg = self._queue[0]
            if seg.turn_id not in self._started_turns:
                self._started_turns.add(seg.turn_id)
                self._on_first_audio(seg.turn_id)
            take = seg.pcm[seg.pos : seg.pos + need]
            seg.pos += take.size
            need -= take.size
            parts.append(take)
            key = (seg.turn_id, seg.clause_id)
            self._clause_ms[key] = self._clause_ms.get(key, 0.0) + take.size / SAMPLES_PER_MS
            done = seg.pos >= seg.pcm.size
            if report:
                self._on_progress(seg.turn_id, seg.clause_id, seg.heard_chars(), int(self._clause_ms[key]), done and seg.clause_done)
            if done:
                self._queue.popleft()
                if seg.clause_done:
                    self._clause_ms.pop(key, None)
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class PlayoutTrack(MediaStreamTrack):
    """The agent's outgoing audio track: one 20 ms frame per tick on a steady
    clock (aiortc's sender pulls as fast as recv() returns)."""

    kind = "audio"

    def __init__(self, playout: Playout) -> None:
        super().__init__()
        self.playout = playout
        self._start: float | None = None
        self._n = 0
        self._lateness = metric("voxmesh_frame_lateness_seconds")
        self._late = metric("voxmesh_playout_late_frames_total")
        self._frames = metric("voxmesh_playout_frames_total")

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        deadline = self._start + self._n * 0.020
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = -delay
            self._lateness.observe(late)
            if late > 0.020:
                self._late.inc()
                if late > 0.2:  # fell far behind (a stall): re-anchor instead of bursting
                    self._start = time.monotonic() - self._n * 0.020
        pcm = self.playout.next_frame()
        if self.playout.on_output is not None:
            self.playout.on_output(pcm)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = WEBRTC_RATE
        frame.pts = self._n * WEBRTC_FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, WEBRTC_RATE)
        self._n += 1
        self._frames.labels(kind="audio" if pcm.any() else "silence").inc()
        return frame
