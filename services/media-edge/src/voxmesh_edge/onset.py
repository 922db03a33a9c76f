"""Barge-in onset at the edge: has the caller started talking over the agent?

stt's SpeechStarted comes late for stopping the agent: its Silero VAD looks at
32 ms windows of 40 ms chunks and wants `min_speech_ms` of speech, then the
event comes back over gRPC. The edge already holds the caller's decoded audio,
frame by frame, the moment it arrives, and knows whether the agent is playing.
So while (and only while) agent audio is going out, it runs this detector on
every inbound frame and pauses the playout itself; stt's SpeechStarted still
opens the turn and the orchestrator still confirms or resumes (a local pause
stt does not confirm is undone by the session).

Why energy and not a second VAD model: it costs a few microseconds per 20 ms
frame (edge capacity, docs/capacity.md), and a false local pause is cheap (the
audio resumes where it stopped). What it must not do is fire on what is not
the caller starting to talk:

- a click or a knock: a burst shorter than `min_active_ms` of sustained energy;
- background noise: the threshold rides `margin_db` over a tracked noise floor;
- the agent's own voice leaking back into the microphone: at the onset the
  recent microphone audio is correlated with what was played (EchoGuard), and
  a match is no onset; the detector then waits for a quiet window before it
  looks again, so a leak costs one correlation per burst, not one per frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voxmesh_edge.audio import nonzero
from voxmesh_edge.echo import EchoGuard

RATE = 16000


@dataclass(frozen=True)
class OnsetOptions:
    # Energy is measured in windows this long (16 kHz samples: 160 = 10 ms).
    window_ms: int = 10
    # Sustained energy needed for an onset: clicks and knocks are shorter.
    # 30 ms = the frame with the onset and the next one.
    min_active_ms: int = 30
    # A window is active above max(threshold_dbfs, noise floor + margin_db).
    # -42 dBFS is about where the client's own speech bound (-40 dBFS) sits.
    threshold_dbfs: float = -42.0
    margin_db: float = 12.0
    # Microphone audio correlated with the agent's playout at an onset.
    echo_window_ms: int = 100


class OnsetDetector:
    """Fed 16 kHz int16 audio as it arrives; `feed` returns the sample index
    (in the detector's own count) where sustained speech-level energy began,
    once per burst, or None."""

    skip_digital_silence = True  # see _digital_silence

    def __init__(self, echo: EchoGuard | None = None, options: OnsetOptions | None = None) -> None:
        self.options = o = options or OnsetOptions()
        self.echo = echo
        self._win = RATE * o.window_ms // 1000
        self._need = max(1, -(-o.min_active_ms // o.window_ms))
        self._floor_db = -70.0
        self._active = 0          # consecutive active windows
        self._fired = False       # this burst already gave an onset (or was echo)
        self._rest = np.zeros(0, np.int16)
        self._samples = 0         # samples seen (index of the next window's start)
        # The last echo_window_ms of microphone audio, for the echo check.
        self._recent = np.zeros(RATE * o.echo_window_ms // 1000, np.int16)
        self.echo_rejected = 0
        # Set by the session: False when an onset now would be ignored (a
        # local pause pending, a user turn open); such onsets are returned
        # without the echo check.
        self.wanted: Callable[[], bool] | None = None

    @property
    def samples(self) -> int:
        """Samples fed so far (onset indexes count from the first)."""
        return self._samples

    def reset(self) -> None:
        """The audio stops being fed (the agent stopped or paused) and what is
        fed next is not contiguous with it. A burst that already gave its onset
        gives none again until a quiet window is seen: a pause that resumes
        while the same noise goes on must not pause again at once."""
        self._active = 0
        self._rest = np.zeros(0, np.int16)

    def feed(self, pcm: np.ndarray) -> int | None:
        if self.skip_digital_silence and pcm.size and pcm[0] == 0 and pcm[-1] == 0 \
                and not self._rest.size and not pcm.size % self._win and not nonzero(pcm):
            return self._digital_silence(pcm.size)
        r = self._recent
        if pcm.size >= r.size:
            r[:] = pcm[-r.size :]
        else:
            r[: -pcm.size] = r[pcm.size :]
            r[-pcm.size :] = pcm
        x0 = self._samples - self._rest.size  # stream index of x[0]
        self._samples += pcm.size
        x = np.concatenate((self._rest, pcm)) if self._rest.size else pcm
        n = x.size // self._win
        self._rest = x[n * self._win :].copy() if x.size % self._win else _EMPTY
        if n == 0:
            return None
        # Per window: sum of squares in one vector pass, then dBFS in Python (this
        # runs on every inbound packet while the agent talks: edge capacity).
        frames = x[: n * self._win].astype(np.float32).reshape(n, self._win)
        sums = np.einsum("ij,ij->i", frames, frames).tolist()
        scale = 1.0 / (self._win * 32768.0 * 32768.0)
        onset = None
        o = self.options
        for i, total in enumerate(sums):
            db = 10 * math.log10(total * scale + 1e-12)
            if db > max(o.threshold_dbfs, self._floor_db + o.margin_db):
                self._active += 1
                # A steady loud noise must not stay "speech" for ever: the
                # floor creeps up under it too, ten times slower (~1 dB/s).
                self._floor_db += 0.01
                if self._active >= self._need and not self._fired:
                    self._fired = True
                    # The echo check (~1 ms) only when the onset would be acted on.
                    if self.echo is not None and (self.wanted is None or self.wanted()) \
                            and self.echo.is_echo(_declick(self._recent)):
                        self.echo_rejected += 1
                    elif onset is None:
                        onset = x0 + (i + 1 - self._active) * self._win
            else:
                self._active = 0
                self._fired = False
                # The floor falls at once and rises slowly (~1 dB per 100 ms),
                # so speech never raises it much but a noisier room does.
                self._floor_db = db if db < self._floor_db else self._floor_db + 0.1 * min(1.0, db - self._floor_db)
        return onset

    def _digital_silence(self, n: int) -> None:
        """`feed` of n zeros (whole windows, nothing pending), in one step: the edge hands a silent
        DTX caller's gaps on as digital silence, 20 ms at a time, and windows
        of zeros only end a burst and pull the noise floor down (what the loop
        above does for each of them)."""
        r = self._recent
        if n >= r.size:
            r[:] = 0
        else:
            r[:-n] = r[n:]
            r[-n:] = 0
        self._samples += n
        self._active = 0
        self._fired = False
        self._floor_db = min(self._floor_db, _ZERO_DB)
        return None


_EMPTY = np.zeros(0, np.int16)
# The level of a window of zeros as `feed` computes it.
_ZERO_DB = 10 * math.log10(1e-12)


def _declick(x: np.ndarray) -> np.ndarray:
    """Clip what stands far out of the window's bulk (a click riding on the
    echo would otherwise dominate the correlation and hide the match)."""
    a = np.abs(x.astype(np.int32))
    # the 95th percentile (np.percentile's linear rule) by partition: a tenth of the time
    k = 0.95 * (a.size - 1)
    lo = int(k)
    hi = min(lo + 1, a.size - 1)
    part = np.partition(a, (lo, hi))
    p95 = float(part[lo]) + (float(part[hi]) - float(part[lo])) * (k - lo)
    lim = 2.0 * p95 + 1.0
    return np.clip(x, -lim, lim)
