"""The Stt gRPC servicer: one TurnStream per Transcribe call over the process's
shared models.

Process-wide (loaded once): Whisper (one model per decode lane) and its
DecodeScheduler (`decode_lanes` decodes at a time, an urgent lane kept for the end
of turn's decodes, interims at a lower CPU priority, stale work dropped), the Silero VAD session, the Smart Turn session.
VAD and turn model each run in their own single-thread executor so a stream's
speech events and end-of-turn decisions never wait behind a Whisper decode.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from voxmesh.core.aio import cancel_all
from voxmesh.core.logging import session_id_var
from voxmesh.core.metrics import metric
from voxmesh.v1 import stt_pb2, stt_pb2_grpc
from voxmesh_stt import asr as asr_mod
from voxmesh_stt import smart_turn, vad
from voxmesh_stt.settings import SttSettings
from voxmesh_stt.stream import (
    EndOfTurn,
    Event,
    Final,
    Interim,
    SpeechStarted,
    SpeechStopped,
    StreamConfig,
    Transcript,
    TurnStream,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "voxmesh.v1.Stt"
_PRIORITY = {"final": asr_mod.PRIO_FINAL, "speculative": asr_mod.PRIO_SPECULATIVE, "interim": asr_mod.PRIO_INTERIM}


class BadRequest(Exception):
    """Invalid input from the caller: answered with INVALID_ARGUMENT."""


def _window_s(pad_s: float) -> float:
    """A padding setting as seconds to compare by (0 means the full 30 s window: the most)."""
    return pad_s if pad_s > 0 else asr_mod.FULL_WINDOW_S


class Engine:
    """The models and executors every stream of the process shares."""

    def __init__(self, settings: SttSettings) -> None:
        if settings.turn_policy not in ("fused", "audio"):
            raise ValueError(f"VOXMESH_STT_TURN_POLICY must be fused or audio, got {settings.turn_policy!r}")
        self.settings = settings
        self.lanes = asr_mod.shared_lanes(
            settings.model_dir, settings.compute_type, settings.cpu_threads, settings.decode_lanes,
            settings.background_nice,
        )
        self.asr = self.lanes[0]  # plans (tokenizer, window) are the same for every lane
        self.scheduler = asr_mod.DecodeScheduler("stt-asr", self.lanes)
        self.vad_model = vad.shared_model()
        self.turn_model = smart_turn.load(settings.smart_turn_path, settings.turn_threads)
        self.vad_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-vad")
        self.turn_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-turn")

    async def decode(self, audio: np.ndarray, prefix: str, kind: str) -> Transcript:
        """Interims on the `interim_pad_s` window, a pause's decode on
        `pause_pad_s`, finals decoded from scratch and frozen segments on
        `encoder_pad_s`. A pause decode on a shorter window than `encoder_pad_s`
        whose last word the decoder doubts is done again on `encoder_pad_s`,
        and that is the text (see settings)."""
        s = self.settings
        pad = {"interim": s.interim_pad_s, "speculative": s.pause_pad_s}.get(kind, s.encoder_pad_s)
        result = await self._decode_once(audio, prefix, kind, pad)
        metric("voxmesh_stt_decode_seconds").labels(kind).observe(result.seconds)
        shorter = _window_s(pad) < _window_s(s.encoder_pad_s)
        if kind == "speculative" and shorter and result.text.strip() and (
            not result.tail or result.tail[-1][1] < s.redecode_below
        ):
            # (an unknown tail, e.g. after a loop was cut, counts as doubtful)
            again = await self._decode_once(audio, prefix, kind, s.encoder_pad_s)
            metric("voxmesh_stt_decode_seconds").labels("redecode").observe(again.seconds)
            log.debug("pause decoded again", extra={"fast": result.text, "fast_tail": result.tail[-1:] or None,
                                                     "text": again.text, "tail": again.tail[-1:] or None})
            result = asr_mod.second_look(result, again)
        return Transcript(result.text, result.seconds, result.tail)

    async def _decode_once(self, audio: np.ndarray, prefix: str, kind: str, pad_s: float) -> asr_mod.DecodeResult:
        s = self.settings
        prio = _PRIORITY[kind]
        interim = kind == "interim"
        plan = self.asr.plan(audio, prefix=prefix, pad_s=pad_s, max_tokens_per_s=s.max_tokens_per_s)
        beam = s.interim_beam_size if interim else s.final_beam_size
        # Two jobs: the encoder pass, then the search. Between them a speculative or
        # final decode that arrived meanwhile runs first, and a stream that moved on
        # (it cancels this task) never submits the search: the wait a pause can see
        # behind an interim is one encoder pass, not a whole decode. Cancelling the
        # awaiting task also drops a job that has not started.
        encoded, encode_s = await asyncio.wrap_future(self.scheduler.submit(prio, lambda lane: lane.encode(plan)))
        return await asyncio.wrap_future(
            # Interims are shown, not judged: only pause decodes need the tail's confidence.
            self.scheduler.submit(
                prio, lambda lane: lane.finish(plan, encoded, encode_s, beam_size=beam, confidence=not interim)
            )
        )

    def turn_fn(self):
        if self.turn_model is None:
            return None
        model = self.turn_model

        async def run(audio: np.ndarray) -> float:
            return await asyncio.get_running_loop().run_in_executor(self.turn_pool, model, audio)

        return run

    def vad_fn(self):
        state = vad.VadState(self.vad_model)

        async def run(samples: np.ndarray) -> np.ndarray:
            if state.windows_ready(samples.size) == 0:
                return state(samples)  # buffering only, no model call: no executor hop
            return await asyncio.get_running_loop().run_in_executor(self.vad_pool, state, samples)

        return run

    def warm_up(self) -> None:
        """One decode and one turn-model run so the first caller does not pay for
        CTranslate2's and onnxruntime's lazy initialization."""
        t0 = time.perf_counter()
        silence = np.zeros(16000, dtype=np.float32)
        for lane in self.lanes:
            lane.decode(silence)
        if self.turn_model is not None:
            self.turn_model(silence)
        vad.VadState(self.vad_model)(silence)
        log.info("warmed up", extra={"seconds": round(time.perf_counter() - t0, 2)})

    def close(self) -> None:
        self.scheduler.close()
        self.vad_pool.shutdown(wait=False, cancel_futures=True)
        self.turn_pool.shutdown(wait=False, cancel_futures=True)


def stream_config(settings: SttSettings, cfg: stt_pb2.TranscribeConfig) -> StreamConfig:
    """Service defaults merged with the caller's config; raises BadRequest."""
    if cfg.sample_rate != 16000:
        raise BadRequest(f"sample_rate must be 16000 (PCM s16le mono), got {cfg.sample_rate}")
    if cfg.language and not cfg.language.lower().startswith("en"):
        raise BadRequest(f"language {cfg.language!r} is not supported: this model transcribes English only")
    if cfg.stream_offset_ms < 0:
        raise BadRequest("stream_offset_ms must not be negative")
    t = cfg.turn
    for name in ("vad_threshold", "min_speech_ms", "min_silence_ms", "max_silence_ms", "eou_threshold"):
        if getattr(t, name) < 0:
            raise BadRequest(f"turn.{name} must not be negative")
    if any(n <= 0 or n > 64 for n in t.complete_digit_counts):
        raise BadRequest("turn.complete_digit_counts are numbers of digits (1..64)")
    digit_counts = tuple(sorted(set(t.complete_digit_counts))) or tuple(int(n) for n in settings.complete_digit_counts)
    if t.vad_threshold > 1 or t.eou_threshold > 1:
        raise BadRequest("turn.vad_threshold and turn.eou_threshold are probabilities (0..1)")
    min_silence = t.min_silence_ms or settings.min_silence_ms
    max_silence = t.max_silence_ms or max(settings.max_silence_ms, min_silence)
    if max_silence < min_silence:
        raise BadRequest(f"turn.max_silence_ms ({max_silence}) is below min_silence_ms ({min_silence})")
    return StreamConfig(
        stream_offset_ms=int(cfg.stream_offset_ms),
        interim_results=bool(cfg.interim_results),
        vad_threshold=t.vad_threshold or settings.vad_threshold,
        min_speech_ms=t.min_speech_ms or settings.min_speech_ms,
        min_silence_ms=min_silence,
        max_silence_ms=max_silence,
        eou_threshold=t.eou_threshold or settings.eou_threshold,
        preroll_ms=settings.preroll_ms,
        speech_pad_ms=settings.speech_pad_ms,
        speculative_after_ms=settings.speculative_after_ms,
        interim_first_ms=settings.interim_first_ms,
        interim_interval_ms=settings.interim_interval_ms,
        interim_cpu_share=settings.interim_cpu_share,
        max_window_s=settings.max_window_s,
        false_eou_window_ms=settings.false_eou_window_ms,
        turn_policy=settings.turn_policy,
        complete_digit_counts=digit_counts,
        fast_silence_ms=min(settings.fast_silence_ms, min_silence),
    )


def to_proto(ev: Event) -> stt_pb2.TranscribeEvent:
    if isinstance(ev, SpeechStarted):
        return stt_pb2.TranscribeEvent(speech_started=stt_pb2.SpeechStarted(utterance_id=ev.utterance_id, audio_offset_ms=ev.audio_offset_ms))
    if isinstance(ev, SpeechStopped):
        return stt_pb2.TranscribeEvent(speech_stopped=stt_pb2.SpeechStopped(utterance_id=ev.utterance_id, audio_offset_ms=ev.audio_offset_ms))
    if isinstance(ev, Interim):
        return stt_pb2.TranscribeEvent(interim=stt_pb2.Interim(utterance_id=ev.utterance_id, text=ev.text, stable_prefix=ev.stable_prefix))
    if isinstance(ev, Final):
        return stt_pb2.TranscribeEvent(
            final=stt_pb2.Final(
                utterance_id=ev.utterance_id, text=ev.text, start_ms=ev.start_ms, end_ms=ev.end_ms, decode_seconds=ev.decode_seconds
            )
        )
    if isinstance(ev, EndOfTurn):
        return stt_pb2.TranscribeEvent(
            end_of_turn=stt_pb2.EndOfTurn(
                utterance_id=ev.utterance_id, probability=ev.probability, audio_offset_ms=ev.audio_offset_ms, reason=ev.reason
            )
        )
    raise TypeError(f"unknown event {ev!r}")


_DONE = object()


class SttServicer(stt_pb2_grpc.SttServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def Transcribe(
        self, request_iterator: AsyncIterator[stt_pb2.TranscribeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[stt_pb2.TranscribeEvent]:
        active = metric("voxmesh_stt_active_streams")
        active.inc()
        out: asyncio.Queue = asyncio.Queue()
        stream: TurnStream | None = None
        reader: asyncio.Task | None = None
        try:
            try:
                first = await anext(aiter(request_iterator), None)
                if first is None:
                    return  # the caller opened and closed without a word: nothing to say
                if first.WhichOneof("msg") != "config":
                    raise BadRequest("the first TranscribeRequest must carry config (TranscribeConfig), not audio")
                session_id_var.set(first.config.session_id or None)
                cfg = stream_config(self.engine.settings, first.config)
            except BadRequest as exc:
                await self._reject(context, str(exc))
                return

            stream = self._turn_stream(cfg, out.put_nowait)
            reader = asyncio.ensure_future(self._read(request_iterator, stream, out))
            while True:
                item = await out.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, BadRequest):
                        await self._reject(context, str(item))
                        return
                    await context.abort(grpc.StatusCode.INTERNAL, f"stt stream failed: {type(item).__name__}: {item}")
                    return
                yield to_proto(item)
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            if stream is not None:
                await stream.aclose()
            active.dec()

    def _turn_stream(self, cfg: StreamConfig, emit) -> TurnStream:
        return TurnStream(
            cfg,
            vad=self.engine.vad_fn(),
            decode=self.engine.decode,
            turn_model=self.engine.turn_fn(),
            emit=emit,
            clock=asyncio.get_running_loop().time,
            backlog=self.engine.scheduler.backlog,
        )

    async def TranscribeMany(
        self, request_iterator: AsyncIterator[stt_pb2.TranscribeBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[stt_pb2.TranscribeEventBatch]:
        """Each stream of the call as a Transcribe call of its own (a TurnStream
        fed in order by its own task); events of all streams go back in batches:
        whatever is ready when the previous batch has been sent."""
        out: asyncio.Queue = asyncio.Queue()
        members: dict[int, _Member] = {}
        reader = asyncio.ensure_future(self._read_many(request_iterator, members, out))
        try:
            while True:
                part = await out.get()
                if part is _DONE:
                    return
                if isinstance(part, BaseException):
                    await context.abort(grpc.StatusCode.INTERNAL, f"stt call failed: {type(part).__name__}: {part}")
                    return
                parts = [part]
                while not out.empty() and isinstance(parts[-1], stt_pb2.TranscribeEventPart):
                    parts.append(out.get_nowait())
                if not isinstance(parts[-1], stt_pb2.TranscribeEventPart):
                    out.put_nowait(parts.pop())  # the end (or failure) after this batch
                if parts:
                    yield stt_pb2.TranscribeEventBatch(parts=parts)
        finally:
            await cancel_all([reader])
            await asyncio.gather(*(m.aclose() for m in list(members.values())), return_exceptions=True)

    async def _read_many(self, requests: AsyncIterator[stt_pb2.TranscribeBatch], members: dict[int, _Member],
                         out: asyncio.Queue) -> None:
        try:
            await self._read_parts(requests, members, out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call is lost; every stream on it with it
            log.exception("TranscribeMany call failed")
            metric("voxmesh_errors_total").labels("stream").inc()
            out.put_nowait(exc)

    async def _read_parts(self, requests: AsyncIterator[stt_pb2.TranscribeBatch], members: dict[int, _Member],
                          out: asyncio.Queue) -> None:
        # Streams that ended here, the latest _ENDED_KEPT of them: their parts
        # still in flight are dropped quietly (insertion-ordered: oldest first).
        ended: dict[int, None] = {}
        async for batch in requests:
            for part in batch.parts:
                sid = part.stream_id
                member = members.get(sid)
                kind = part.request.WhichOneof("msg") if part.HasField("request") else None
                if member is None:
                    if kind == "config":
                        ended.pop(sid, None)
                        member = _Member(self, sid, part.request.config, out, members, ended)
                        if member.task is None:
                            continue  # refused (bad config): its status is on the way
                        members[sid] = member
                    elif sid in ended:
                        continue
                    else:
                        if not part.cancel:
                            _reject_part(out, sid, "the first part of a stream must carry config (TranscribeConfig)")
                        _remember_ended(ended, sid)
                        continue
                elif kind == "config":
                    member.fail(BadRequest("config may only be sent once, as a stream's first part"))
                    continue
                elif kind == "audio":
                    await member.feed(part.request.audio)
                elif kind is None and not (part.end or part.cancel):
                    member.fail(BadRequest("empty TranscribePart: set request, end or cancel"))
                    continue
                if part.cancel:
                    await member.aclose()
                elif part.end:
                    await member.feed(_END)
        # The caller closed its side: every stream it left open is flushed, as
        # Transcribe does at a half-close, then the call ends.
        for member in list(members.values()):
            await member.feed(_END)
        await asyncio.gather(*(m.task for m in list(members.values()) if m.task is not None), return_exceptions=True)
        out.put_nowait(_DONE)

    async def _read(self, requests: AsyncIterator[stt_pb2.TranscribeRequest], stream: TurnStream, out: asyncio.Queue) -> None:
        try:
            async for req in requests:
                kind = req.WhichOneof("msg")
                if kind == "audio":
                    await stream.feed(req.audio)
                elif kind == "config":
                    raise BadRequest("config may only be sent once, as the first TranscribeRequest")
                else:
                    raise BadRequest("empty TranscribeRequest: set config or audio")
            await stream.finish()  # half-close: flush the open turn
            out.put_nowait(_DONE)
        except asyncio.CancelledError:
            raise
        except BadRequest as exc:
            out.put_nowait(exc)
        except Exception as exc:
            log.exception("stream failed")
            metric("voxmesh_errors_total").labels("stream").inc()
            out.put_nowait(exc)

    async def _reject(self, context: grpc.aio.ServicerContext, details: str) -> None:
        log.warning("bad request", extra={"details": details})
        metric("voxmesh_errors_total").labels("bad_request").inc()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)


_END = object()
_ENDED_KEPT = 4096


def _remember_ended(ended: dict[int, None], sid: int) -> None:
    ended[sid] = None
    if len(ended) > _ENDED_KEPT:
        del ended[next(iter(ended))]


def _status_part(sid: int, code: grpc.StatusCode, details: str = "") -> stt_pb2.TranscribeEventPart:
    return stt_pb2.TranscribeEventPart(stream_id=sid, status=stt_pb2.StreamStatus(code=code.value[0], details=details))


def _reject_part(out: asyncio.Queue, sid: int, details: str) -> None:
    log.warning("bad request", extra={"details": details, "stream_id": sid})
    metric("voxmesh_errors_total").labels("bad_request").inc()
    out.put_nowait(_status_part(sid, grpc.StatusCode.INVALID_ARGUMENT, details))


class _Member:
    """One stream of a TranscribeMany call: its TurnStream, fed in order by its
    own task so that one stream's VAD or flush never holds up the others."""

    # Audio queued for one stream before the call's reader waits for it (gRPC
    # flow control then holds the caller back): ~10 s at 40 ms a part.
    MAX_QUEUED = 250

    def __init__(self, servicer: SttServicer, sid: int, config: stt_pb2.TranscribeConfig, out: asyncio.Queue,
                 members: dict[int, _Member], ended: dict[int, None]) -> None:
        self.sid = sid
        self._out = out
        self._members = members
        self._ended = ended
        self.queue: asyncio.Queue = asyncio.Queue(self.MAX_QUEUED)
        self.stream: TurnStream | None = None
        self.task: asyncio.Task | None = None
        self._active = False
        token = session_id_var.set(config.session_id or None)
        try:
            cfg = stream_config(servicer.engine.settings, config)
        except BadRequest as exc:
            self._finish()
            _reject_part(out, sid, str(exc))
            return
        else:
            self.stream = servicer._turn_stream(cfg, self._emit)
            metric("voxmesh_stt_active_streams").inc()
            self._active = True
            self.task = asyncio.ensure_future(self._run())  # the task keeps the session id for its logs
        finally:
            session_id_var.reset(token)

    def _emit(self, ev: Event) -> None:
        self._out.put_nowait(stt_pb2.TranscribeEventPart(stream_id=self.sid, event=to_proto(ev)))

    async def feed(self, item) -> None:
        if self.task is not None and not self.task.done():
            await self.queue.put(item)

    def fail(self, exc: BadRequest) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._finish()
        _reject_part(self._out, self.sid, str(exc))
        if self.stream is not None:
            asyncio.ensure_future(self.stream.aclose())

    async def _run(self) -> None:
        try:
            while True:
                item = await self.queue.get()
                if item is _END:
                    await self.stream.finish()
                    self._finish()
                    self._out.put_nowait(_status_part(self.sid, grpc.StatusCode.OK))
                    return
                await self.stream.feed(item)
        except asyncio.CancelledError:
            raise
        except BadRequest as exc:
            self._finish()
            _reject_part(self._out, self.sid, str(exc))
        except Exception as exc:
            log.exception("stream failed")
            metric("voxmesh_errors_total").labels("stream").inc()
            self._finish()
            self._out.put_nowait(_status_part(self.sid, grpc.StatusCode.INTERNAL, f"stt stream failed: {type(exc).__name__}: {exc}"))

    def _finish(self) -> None:
        """The stream is over: its id is free, later parts for it are dropped."""
        if self._members.get(self.sid) is self:
            del self._members[self.sid]
        _remember_ended(self._ended, self.sid)
        if self._active:
            self._active = False
            metric("voxmesh_stt_active_streams").dec()

    async def aclose(self) -> None:
        """Drop the stream (the caller cancelled it, or the call is over)."""
        if self.task is not None:
            await cancel_all([self.task])
        self._finish()
        if self.stream is not None:
            await self.stream.aclose()


async def serve(settings: SttSettings, stop_event: asyncio.Event | None = None, port: int | None = None) -> None:
    from voxmesh.core.service import serve_grpc

    engine_box: list[Engine] = []

    async def setup(server: grpc.aio.Server):
        loop = asyncio.get_running_loop()
        # Loading and warming take a few seconds of CPU: off the event loop.
        engine = await loop.run_in_executor(None, Engine, settings)
        await loop.run_in_executor(None, engine.warm_up)
        engine_box.append(engine)
        stt_pb2_grpc.add_SttServicer_to_server(SttServicer(engine), server)

        async def cleanup() -> None:
            engine.close()

        return cleanup

    await serve_grpc(
        "stt",
        [SERVICE_NAME],
        setup,
        port=settings.port if port is None else port,
        metrics_port=settings.metrics_port,
        grace=settings.grace_s,
        host=settings.host,
        stop_event=stop_event,
    )
