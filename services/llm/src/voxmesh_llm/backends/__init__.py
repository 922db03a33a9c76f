"""Generation backends behind one interface (base.LlmBackend)."""

from __future__ import annotations

from voxmesh_llm.backends.base import LlmBackend
from voxmesh_llm.settings import LlmSettings


def create_backend(settings: LlmSettings) -> LlmBackend:
    """The backend named by settings.backend (not started yet: await start())."""
    if settings.backend == "llama_cpp":
        from voxmesh_llm.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(settings)
    raise ValueError(f"VOXMESH_LLM_BACKEND: unknown backend {settings.backend!r} (known: llama_cpp)")
