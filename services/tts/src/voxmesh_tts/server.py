"""The Tts gRPC service: one Synthesize bidi stream per agent turn.

The first request carries the config; later ones carry clauses, in order. A reader
task pulls clauses off the request stream into a queue while the handler speaks
them one after another, so a clause is synthesized as soon as it arrives and the
previous one is done, never waiting for the request stream to end. When the caller
cancels, gRPC cancels the handler task: the backend's iterator is closed (no further
segment starts) and the reader is cancelled with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import soxr

from voxmesh.core.aio import cancel_all, spawn
from voxmesh.core.logging import session_id_var
from voxmesh.core.metrics import metric
from voxmesh.core.service import serve_grpc
from voxmesh.v1 import common_pb2, tts_pb2, tts_pb2_grpc

from voxmesh_tts.backends import create_backend
from voxmesh_tts.backends.base import TtsBackend, UnknownVoice
from voxmesh_tts.settings import TtsSettings

log = logging.getLogger(__name__)

SERVICE_NAME = tts_pb2.DESCRIPTOR.services_by_name["Tts"].full_name
_END = object()  # the caller half-closed its request stream


class _BadRequest(Exception):
    pass


class TtsServicer(tts_pb2_grpc.TtsServicer):
    def __init__(self, backend: TtsBackend) -> None:
        self.backend = backend
        self._first_chunk = metric("voxmesh_tts_first_chunk_seconds")
        self._active = metric("voxmesh_tts_active_streams")
        self._audio_s = metric("voxmesh_tts_audio_seconds_total")
        self._rtf = metric("voxmesh_tts_realtime_factor")
        self._errors = metric("voxmesh_errors_total")

    async def Synthesize(
        self, request_iterator: AsyncIterator[tts_pb2.SynthesizeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeChunk]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("msg") != "config":
            got = "nothing" if first is None else (first.WhichOneof("msg") or "an empty request")
            self._errors.labels(where="tts_bad_request").inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first SynthesizeRequest must carry config (SynthesizeConfig); got {got}",
            )
        cfg = first.config
        session_id_var.set(cfg.session_id or None)
        speed = cfg.speed or 1.0
        try:
            voice = self.backend.check_voice(cfg.voice)
            if not 0.25 <= speed <= 4.0:
                raise ValueError(f"config.speed must be within [0.25, 4.0] (or 0 for default); got {cfg.speed}")
            if cfg.sample_rate and not 8000 <= cfg.sample_rate <= 48000:
                raise ValueError(f"config.sample_rate must be within [8000, 48000] Hz (or 0 for the voice's own); got {cfg.sample_rate}")
        except (UnknownVoice, ValueError) as exc:
            self._errors.labels(where="tts_bad_request").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        out_rate = cfg.sample_rate or self.backend.sample_rate
        queue: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        spawn(self._read(request_iterator, queue), tasks, name="tts-read")
        self._active.inc()
        clauses = 0
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, _BadRequest):
                    self._errors.labels(where="tts_bad_request").inc()
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(item))
                if isinstance(item, BaseException):
                    raise item
                clause, received = item
                clauses += 1
                async for chunk in self._speak(clause, received, voice, speed, out_rate):
                    yield chunk
        except asyncio.CancelledError:
            log.info("synthesize cancelled by caller", extra={"clauses": clauses})
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            self._errors.labels(where="tts_synthesize").inc()
            log.exception("synthesize failed")
            await context.abort(grpc.StatusCode.INTERNAL, "synthesis failed")
        finally:
            self._active.dec()
            await cancel_all(tasks)

    async def _read(self, request_iterator, queue: asyncio.Queue) -> None:
        """Queue clauses as they arrive, stamped with their arrival time."""
        try:
            async for req in request_iterator:
                if req.WhichOneof("msg") != "clause":
                    queue.put_nowait(_BadRequest(f"only the first SynthesizeRequest may carry config; got {req.WhichOneof('msg') or 'an empty request'} after it"))
                    return
                queue.put_nowait((req.clause, time.perf_counter()))
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the request stream broke (caller gone)
            queue.put_nowait(exc)

    async def _speak(
        self, clause: tts_pb2.Clause, received: float, voice: str, speed: float, out_rate: int
    ) -> AsyncIterator[tts_pb2.SynthesizeChunk]:
        rate = self.backend.sample_rate
        # One stream resampler per clause: soxr keeps its filter state across
        # chunks, so the seams are inaudible, and the clause's last chunk
        # flushes what its filter still holds (~0.1 s at 22.05 -> 48 kHz).
        resample = None if out_rate == rate else soxr.ResampleStream(rate, out_rate, 1, dtype="int16", quality="HQ")
        first = True
        samples = 0
        synth_s = 0.0
        # aclosing: when the caller cancels, the backend's generator is closed right
        # here, so it cannot start another segment.
        async with contextlib.aclosing(self.backend.synthesize(clause.text, voice=voice, speed=speed)) as chunks:
            async for c in chunks:
                samples += c.samples
                synth_s += c.synth_s
                audio = c.pcm
                if resample is not None:
                    audio = resample.resample_chunk(np.frombuffer(audio, dtype="<i2"), last=c.last).tobytes()
                msg = tts_pb2.SynthesizeChunk(
                    clause_id=clause.clause_id,
                    audio=audio,
                    sample_rate=out_rate,
                    span=common_pb2.TextSpan(start=c.span[0], end=c.span[1]),
                    words=[
                        common_pb2.WordTiming(
                            span=common_pb2.TextSpan(start=w.start, end=w.end), start_ms=w.start_ms, end_ms=w.end_ms
                        )
                        for w in c.words
                    ],
                    clause_done=c.last,
                    aligned=c.aligned,
                )
                if first:
                    first = False
                    self._first_chunk.observe(time.perf_counter() - received)
                yield msg
        audio_s = samples / rate if rate else 0.0
        if audio_s > 0:
            self._audio_s.inc(audio_s)
            # Model time over audio length (excludes waiting for the synthesis thread
            # and for the caller to read; those show in first-chunk latency).
            self._rtf.observe(synth_s / audio_s)


async def build(settings: TtsSettings) -> tuple[TtsBackend, TtsServicer]:
    backend = create_backend(settings)
    await backend.start()
    return backend, TtsServicer(backend)


async def serve(settings: TtsSettings, stop_event: asyncio.Event | None = None, backend: TtsBackend | None = None) -> None:
    """Run the tts service until SIGTERM/SIGINT (or stop_event); `backend` lets a
    test share one loaded voice between servers."""

    async def setup(server: grpc.aio.Server):
        nonlocal backend
        if backend is None:
            backend, servicer = await build(settings)
            owned = True
        else:
            servicer, owned = TtsServicer(backend), False
        tts_pb2_grpc.add_TtsServicer_to_server(servicer, server)

        async def cleanup() -> None:
            if owned:
                await backend.close()

        return cleanup

    await serve_grpc(
        "tts", [SERVICE_NAME], setup, port=settings.port, metrics_port=settings.metrics_port,
        grace=settings.grace_s, host=settings.host, stop_event=stop_event,
    )
