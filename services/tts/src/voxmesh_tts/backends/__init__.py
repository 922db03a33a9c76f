"""Synthesis backends behind one interface (base.TtsBackend)."""

from __future__ import annotations

from voxmesh_tts.backends.base import TtsBackend
from voxmesh_tts.settings import TtsSettings


def create_backend(settings: TtsSettings) -> TtsBackend:
    """The backend named by settings.backend (not loaded yet: call load()/start())."""
    if settings.backend == "piper":
        from voxmesh_tts.backends.piper import PiperBackend

        return PiperBackend(settings)
    raise ValueError(f"VOXMESH_TTS_BACKEND: unknown backend {settings.backend!r} (known: piper)")
