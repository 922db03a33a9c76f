"""End-of-turn model: Smart Turn v3.2 (BSD-2, by Daily), ONNX on CPU.

The model reads the last 8 s of the turn's audio as Whisper log-mel features
(80 x 800) and outputs the probability that the speaker has finished their turn.
Input preparation follows the reference analyzer: the turn audio from just before
the onset to now, the last 8 s of it (left-padded with zeros when shorter),
waveform normalized to zero mean and unit variance, then Whisper's log-mel
spectrogram. The features are computed here in numpy so the service needs neither
transformers nor torch.

The .onnx file ships inside the pipecat-ai wheel; scripts/fetch_smart_turn.py
extracts just that file into a cache directory (no pipecat dependencies, no
download at run time).
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
SECONDS = 8
N_SAMPLES = SECONDS * SAMPLE_RATE


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as Whisper uses."""
    f = np.asarray(f, dtype=np.float64)
    mel = 3.0 * f / 200.0
    log_part = f >= 1000.0
    return np.where(log_part, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f = 200.0 * m / 3.0
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), f)


@functools.cache
def mel_filters() -> np.ndarray:
    """(N_MELS, N_FFT//2+1) triangular filters with Slaney area normalization."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2)
    hz_pts = _mel_to_hz(mel_pts)
    widths = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    return weights


@functools.cache
def _hann() -> np.ndarray:
    # Periodic Hann window (torch.hann_window's default), not numpy's symmetric one.
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper log-mel features (80, 800) of 8 s of 16 kHz float audio."""
    x = np.asarray(audio, dtype=np.float32)
    if x.size < N_SAMPLES:
        x = np.pad(x, (0, N_SAMPLES - x.size))
    x = x[:N_SAMPLES]
    # Normalization happens on the waveform, before the spectrogram (as the
    # reference feature extractor does with do_normalize=True).
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2  # (frames, bins)
    mel = np.maximum(1e-10, power @ mel_filters().T).T  # (80, frames)
    logspec = np.log10(mel)[:, :-1]  # Whisper drops the last frame: 800 frames
    logspec = np.maximum(logspec, logspec.max() - 8.0)
    return ((logspec + 4.0) / 4.0).astype(np.float32)


def prepare(audio: np.ndarray) -> np.ndarray:
    """Model input (1, 80, 800) from turn audio of any length: keep the last 8 s,
    left-pad shorter audio with silence (the end of the turn is what matters)."""
    x = np.asarray(audio, dtype=np.float32)[-N_SAMPLES:]
    if x.size < N_SAMPLES:
        x = np.pad(x, (N_SAMPLES - x.size, 0))
    return log_mel(x)[None]


class SmartTurn:
    """Blocking `__call__(audio) -> P(complete)`; run it in its own executor."""

    def __init__(self, path: str, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if names != ["input_features"]:
            raise RuntimeError(f"{path}: unexpected inputs {names}; expected Smart Turn v3 (input_features)")

    def __call__(self, audio: np.ndarray) -> float:
        out = self.session.run(None, {"input_features": prepare(audio)})[0]
        # The graph ends in a sigmoid: this is already a probability.
        return float(np.asarray(out).reshape(-1)[0])


@functools.cache
def load(path: str, threads: int = 1) -> SmartTurn | None:
    """The process's turn model, or None (turns then end on silence alone)."""
    if not path:
        log.info("turn model disabled; turns end on silence")
        return None
    if not os.path.exists(path):
        log.error(
            "turn model file missing; turns end on silence (run services/stt/scripts/fetch_smart_turn.py)",
            extra={"path": path},
        )
        return None
    model = SmartTurn(path, threads)
    log.info("turn model loaded", extra={"path": path})
    return model
