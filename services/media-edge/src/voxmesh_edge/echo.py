"""Echo guard: is a speech onset just the agent's own voice coming back?

Browsers cancel most echo (the demo page asks for echoCancellation), but a
speakerphone or a client without AEC leaks the agent's audio into the
microphone, and the VAD then "hears the user" every time the agent talks. The
edge is the one place that has both signals: what it played and what came
back. At an onset it correlates the microphone audio since the onset with the
agent audio played in the last moments (any delay up to `max_delay_s`); a
strong match means echo, so the onset is not a barge-in.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from voxmesh_edge.audio import SILENCE, WEBRTC_FRAME_SAMPLES, nonzero

RATE = 16000
FRAME_REF = WEBRTC_FRAME_SAMPLES // 3  # reference samples per 20 ms output frame


class EchoGuard:
    MIN_REF_RMS = 32.0  # int16 units, ~-60 dBFS: quieter played audio is not compared

    def __init__(self, history_s: float = 2.0, max_delay_s: float = 0.6, threshold: float = 0.55) -> None:
        # A ring buffer: played() runs on every output tick of every session, so
        # it writes 320 samples in place (np.roll copied all 2 s of history per
        # tick, ~8 % of the edge's event loop at 10 sessions); the ordered copy
        # is made only when an onset is checked.
        self._buf = np.zeros(int(history_s * RATE), np.float32)
        self._pos = 0
        self.max_delay = int(max_delay_s * RATE)
        self.threshold = threshold
        self._audible_ticks = 0
        # Samples at the end of the ring known to be zero (capped at its size):
        # once the whole ring is silence, silent ticks need no write at all,
        # only the position moves on.
        self._zero_run = self._buf.size
        # Called before the history is read: a playout track that sleeps
        # through idle ticks (media.PacedOpusTrack with DTX) accounts the
        # silent ticks already due, so a check between its wake-ups sees the
        # history it would have seen with a write every tick.
        self.sync: Callable[[], None] | None = None

    @property
    def _ref(self) -> np.ndarray:
        """The played history, oldest first."""
        if self.sync is not None:
            self.sync()
        return np.concatenate((self._buf[self._pos :], self._buf[: self._pos]))

    def _tail(self, n: int) -> np.ndarray:
        """The last n samples played, oldest first (a copy of just those)."""
        n = min(n, self._buf.size)
        start = self._pos - n
        if start >= 0:
            return self._buf[start : self._pos].copy()
        return np.concatenate((self._buf[start:], self._buf[: self._pos]))

    def played(self, pcm48: np.ndarray) -> None:
        """Record output (48 kHz): one tick, or several in one packet.
        Decimation without a filter is enough for correlating speech envelopes
        and costs nothing per tick."""
        if pcm48 is SILENCE:
            # an idle playout's tick is the shared SILENCE frame: known silent, not scanned
            self.silence(1)
            return
        x = pcm48[::3]
        n, size = x.size, self._buf.size
        end = self._pos + n
        if end <= size:
            self._buf[self._pos : end] = x
        else:
            k = size - self._pos
            self._buf[self._pos :] = x[:k]
            self._buf[: n - k] = x[k:]
        self._pos = end % size
        ticks = max(1, pcm48.size // WEBRTC_FRAME_SAMPLES)
        if nonzero(pcm48):
            self._audible_ticks += ticks
            self._zero_run = 0
        else:
            self._audible_ticks = max(0, self._audible_ticks - ticks)
            self._zero_run = min(size, self._zero_run + n)

    def silence(self, frames: int) -> None:
        """Record `frames` silent output frames at once: exactly what as many
        played(SILENCE) calls would leave, without a write once the ring is
        all silence (the position still moves on, arithmetically)."""
        if frames <= 0:
            return
        n, size = frames * FRAME_REF, self._buf.size
        if self._zero_run < size:
            if n >= size:
                self._buf[:] = 0
            else:
                end = self._pos + n
                if end <= size:
                    self._buf[self._pos : end] = 0
                else:
                    self._buf[self._pos :] = 0
                    self._buf[: end - size] = 0
        self._zero_run = min(size, self._zero_run + n)
        self._pos = (self._pos + n) % size
        self._audible_ticks = max(0, self._audible_ticks - frames)

    def recently_audible(self) -> bool:
        if self.sync is not None:
            self.sync()
        if self._audible_ticks > 0:
            return True
        # the last max_delay samples are all zero when the zero run covers them
        return self._zero_run < self.max_delay and bool(np.any(self._tail(self.max_delay)))

    def similarity(self, mic16: np.ndarray) -> float:
        """Peak normalized cross-correlation of `mic16` with the played audio at
        any delay in [0, max_delay]: 1.0 is a perfect (scaled) copy."""
        if mic16.size < RATE // 20 or not self.recently_audible():
            return 0.0
        # float64 throughout: numpy 2 keeps float32 FFTs in float32, and their
        # rounding noise (~1e-7 of the whole signal) divided by the energy of a
        # near-silent stretch of the played history (a pause, the silence
        # before a reply) gave "similarities" of 30-100: every onset after a
        # pause was taken for echo.
        mic = mic16.astype(np.float64)
        mic -= mic.mean()
        L = mic.size
        ref = self._tail(L + self.max_delay).astype(np.float64)
        if ref.size < L or not ref.any():
            return 0.0
        # Only the lags 0..ref.size-L are used, and for those a circular
        # correlation of length >= ref.size is exact: no need to pad to
        # ref.size + L (a multiple of 512 keeps pocketfft on small primes).
        n = -(-ref.size // 512) * 512
        spec = np.fft.rfft(ref, n)
        spec *= np.conj(np.fft.rfft(mic, n))
        corr = np.fft.irfft(spec, n)[: ref.size - L + 1]
        csum = np.cumsum(ref * ref)
        win_energy = np.empty(corr.size)
        win_energy[0] = csum[L - 1]
        win_energy[1:] = csum[L : L + corr.size - 1] - csum[: corr.size - 1]
        # Delays at which what was played is (near) silence cannot be the echo
        # of anything: below ~-60 dBFS the ratio is noise over noise.
        audible = win_energy > L * self.MIN_REF_RMS**2
        if not audible.any():
            return 0.0
        # max |corr| / sqrt(energy x mic energy), with one square root
        c = corr[audible]
        c *= c
        c /= win_energy[audible]
        return float(min(1.0, np.sqrt(float(c.max()) / (float(np.dot(mic, mic)) + 1e-9))))

    def is_echo(self, mic16: np.ndarray) -> bool:
        return self.similarity(mic16) >= self.threshold
