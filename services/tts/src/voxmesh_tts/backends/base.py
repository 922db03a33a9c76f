"""The interface every tts backend implements.

A backend turns the text of one clause into a stream of audio chunks. Each chunk
says which span of the clause text it speaks and where each word inside it falls,
so the media edge can tell exactly what the user heard when playback is cut.

Contract:
- `synthesize(text, ...)` is an async iterator; it yields chunks in order, the first
  one as soon as it exists (a backend splits long text and streams, it does not
  synthesize the whole clause first).
- The spans of the chunks of one clause cover [0, len(text)) in order, without gaps
  or overlaps; the last chunk has `last=True` (it may carry no audio, e.g. for text
  with nothing to speak).
- Cancellation: when the consumer stops iterating (aclose) or its task is cancelled,
  the backend starts no further work for that text. Work already running on a model
  thread may finish there, its result is dropped; it must not delay other callers by
  more than that one step.
- Model work never runs on the event loop.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WordTiming:
    """One word: char offsets [start, end) into the clause text; ms relative to the
    start of the chunk that carries it."""

    start: int
    end: int
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class AudioChunk:
    pcm: bytes  # s16le mono at the backend's sample_rate
    span: tuple[int, int]  # [start, end) into the clause text
    words: tuple[WordTiming, ...] = field(default_factory=tuple)
    aligned: bool = False  # word timings come from the model, not an estimate
    last: bool = False  # last chunk of the clause
    # Model seconds spent on the audio first delivered with this chunk (the segment
    # it starts); summed per clause for the real-time factor.
    synth_s: float = 0.0

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2


class UnknownVoice(ValueError):
    """The requested voice is not served by this backend."""


class TtsBackend(abc.ABC):
    name: str  # e.g. "piper"
    sample_rate: int  # of every chunk this backend yields (valid after load)
    default_voice: str  # the voice used for voice=""

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model(s) once per process (blocking; call off the event loop)."""

    async def start(self) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.load)

    @abc.abstractmethod
    def voices(self) -> tuple[str, ...]:
        """Names accepted as SynthesizeConfig.voice (besides "")."""

    def check_voice(self, voice: str) -> str:
        """The voice name to use for `voice` ("" -> default); UnknownVoice if not served."""
        if not voice:
            return self.default_voice
        if voice not in self.voices():
            raise UnknownVoice(f"unknown voice {voice!r}; this server has {list(self.voices())}")
        return voice

    @abc.abstractmethod
    def synthesize(self, text: str, *, voice: str = "", speed: float = 1.0) -> AsyncIterator[AudioChunk]:
        """Stream the audio of `text` (see the module contract)."""

    async def close(self) -> None:
        """Release threads and models."""
