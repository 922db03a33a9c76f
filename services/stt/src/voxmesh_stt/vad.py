"""Streaming Silero VAD (v6 ONNX, shipped in faster_whisper/assets).

The model scores 512-sample windows (32 ms at 16 kHz). Each window is fed with the
64 samples before it as context, so one input row is 576 samples; the LSTM state
(h, c: 1x1x128 each) carries across windows and is kept per stream. Several windows
can go through one `run` as rows of one batch: the graph runs its LSTM over the rows
in order with the given state, which is what sequential calls would do (tested).
"""

from __future__ import annotations

import functools
import os

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # samples per decision: 32 ms
CONTEXT = 64
WINDOW_MS = WINDOW * 1000 // SAMPLE_RATE


def default_model_path() -> str:
    import faster_whisper

    return os.path.join(os.path.dirname(faster_whisper.__file__), "assets", "silero_vad_v6.onnx")


class SileroModel:
    """One ONNX session per process; state lives in `VadState`, one per stream.
    onnxruntime sessions are safe to `run` from several threads."""

    def __init__(self, path: str | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # A 32 ms window costs well under a millisecond; more threads only add
        # contention with the Whisper decodes.
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path or default_model_path(), sess_options=opts, providers=["CPUExecutionProvider"])

    def run(self, rows: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probs, h, c = self.session.run(None, {"input": rows, "h": h, "c": c})
        return np.asarray(probs, dtype=np.float32).reshape(-1), h, c


@functools.cache
def shared_model(path: str | None = None) -> SileroModel:
    return SileroModel(path)


class VadState:
    """Per-stream VAD: buffers float samples and scores every complete window."""

    def __init__(self, model: SileroModel) -> None:
        self.model = model
        self.h = np.zeros((1, 1, 128), dtype=np.float32)
        self.c = np.zeros((1, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)

    def windows_ready(self, extra: int = 0) -> int:
        return (self.pending.size + extra) // WINDOW

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Append float32 samples in [-1, 1]; return the speech probability of each
        window completed by them (possibly none). Blocking: run it in an executor."""
        buf = np.concatenate([self.pending, samples]) if self.pending.size else samples
        n = buf.size // WINDOW
        self.pending = buf[n * WINDOW :].copy()
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        windows = buf[: n * WINDOW].reshape(n, WINDOW)
        rows = np.empty((n, CONTEXT + WINDOW), dtype=np.float32)
        rows[0, :CONTEXT] = self.context
        if n > 1:
            rows[1:, :CONTEXT] = windows[:-1, -CONTEXT:]
        rows[:, CONTEXT:] = windows
        self.context = windows[-1, -CONTEXT:].copy()
        probs, self.h, self.c = self.model.run(rows, self.h, self.c)
        return probs
