"""The sessions' stt streams, many to a gRPC call (Stt.TranscribeMany).

One Transcribe call per session cost the edge a gRPC message per 40 ms chunk
of every session (~17 per session-second with turn-taking callers), and each
message costs far more than its bytes: serialization, a C-core batch, a
completion that wakes gRPC's poller thread and then the event loop. Here a
session's `write` only appends to a buffer; each call's writer sends, in one
message, whatever every stream on the call has gathered in `batch_ms` (10 ms
by default) since the first of it came. Sessions' chunks arrive spread over
time (each caller on its own clock), so batching needs that window: with none
(batch_ms=0) a message carried 1.2 parts at 60 sessions; with 10 ms, stt hears
each chunk 5 ms later on average and a message carries ~10 sessions' audio.

Each stream keeps the semantics of a Transcribe call: config first, audio in
order, `done_writing` flushes the turn and the stream ends after stt's last
event; a stream's error arrives as `grpc.aio.AioRpcError` with the status stt
gave it (INVALID_ARGUMENT for bad input), and a broken call fails every stream
on it with the call's status, so the session's reconnect and replay logic is
the same as with a call of its own.

Balancing: a call goes to one stt replica (the channel's round robin picks one
per call), so a call takes at most `streams_per_call` streams and the next
session opens a new call, which round robin sends to the next replica. An edge
process with 60 sessions holds 4 calls at the default of 16.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from voxmesh.v1 import stt_pb2, stt_pb2_grpc

log = logging.getLogger(__name__)

_CODES = {c.value[0]: c for c in grpc.StatusCode}
_END = object()  # a stream's end, in its event queue
# One message stays well under gRPC's size limits whatever piled up while stt
# was away: ~2 s of one stream's audio, ~30 s of all streams' audio per message.
_MAX_PART_BYTES = 64_000
_MAX_BATCH_BYTES = 1_000_000


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class SttStream:
    """One session's stream on a shared call: `write` audio, iterate events."""

    def __init__(self, call: _MuxCall, stream_id: int) -> None:
        self._call = call
        self.id = stream_id
        self.events: asyncio.Queue = asyncio.Queue()
        self.done = False  # stt ended it, the call broke, or it was cancelled

    def write(self, audio: bytes) -> None:
        """Queue 16 kHz PCM for the call's next message (never waits)."""
        if not self.done:
            self._call.send(self, audio)

    def done_writing(self) -> None:
        """The caller's half-close: stt flushes the open turn, sends its last
        events, and the stream ends."""
        if not self.done:
            self._call.end(self)

    def cancel(self) -> None:
        """Drop the stream: no flush, no more events."""
        if not self.done:
            self._call.finish(self, cancel=True)

    def __aiter__(self) -> SttStream:
        return self

    async def __anext__(self) -> stt_pb2.TranscribeEvent:
        item = await self.events.get()
        if item is _END:
            self.events.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.events.put_nowait(item)
            raise item
        return item


class _Pending:
    """What a stream has for the next message: its config once, audio, end."""

    __slots__ = ("config", "audio", "end", "cancel")

    def __init__(self) -> None:
        self.config: stt_pb2.TranscribeConfig | None = None
        self.audio = bytearray()
        self.end = False
        self.cancel = False


class _MuxCall:
    """One TranscribeMany call: a writer task that batches, a reader task that
    hands each event to its stream."""

    def __init__(self, mux: SttMux) -> None:
        self._mux = mux
        self.streams: dict[int, SttStream] = {}
        self._pending: dict[int, _Pending] = {}
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.messages = 0  # sent, for tests and benchmarks
        self._call = mux.stub.TranscribeMany(wait_for_ready=True)
        self._writer = asyncio.ensure_future(self._write_loop())
        self._reader = asyncio.ensure_future(self._read_loop())

    def open(self, stream_id: int, config: stt_pb2.TranscribeConfig) -> SttStream:
        stream = SttStream(self, stream_id)
        self.streams[stream_id] = stream
        self._part(stream_id).config = config
        return stream

    def _part(self, stream_id: int) -> _Pending:
        p = self._pending.get(stream_id)
        if p is None:
            p = self._pending[stream_id] = _Pending()
            if self._timer is None:
                # The first part since the last message opens the batch window.
                if self._mux.batch_s > 0:
                    self._timer = asyncio.get_running_loop().call_later(self._mux.batch_s, self._window_closed)
                else:
                    self._wake.set()
        return p

    def _window_closed(self) -> None:
        self._timer = None
        self._wake.set()

    def send(self, stream: SttStream, audio: bytes) -> None:
        self._part(stream.id).audio += audio

    def end(self, stream: SttStream) -> None:
        self._part(stream.id).end = True

    def finish(self, stream: SttStream, cancel: bool = False, error: BaseException | None = None) -> None:
        """The stream is over: tell stt (cancel) and the stream's reader."""
        if stream.done:
            return
        stream.done = True
        self.streams.pop(stream.id, None)
        if cancel:
            p = self._part(stream.id)
            p.config, p.audio, p.end, p.cancel = None, bytearray(), False, True
        stream.events.put_nowait(error if error is not None else _END)
        if not self.streams:
            self.closing = True  # no new stream joins; the writer closes the call
            self._wake.set()

    def _batch(self) -> stt_pb2.TranscribeBatch:
        parts, size = [], 0
        for sid in list(self._pending):
            if size >= _MAX_BATCH_BYTES:
                self._wake.set()  # the rest goes in the next message
                break
            p = self._pending[sid]
            if p.config is not None:
                parts.append(stt_pb2.TranscribePart(stream_id=sid, request=stt_pb2.TranscribeRequest(config=p.config)))
                p.config = None
            if p.audio:
                chunk = bytes(p.audio[:_MAX_PART_BYTES])
                del p.audio[:_MAX_PART_BYTES]
                size += len(chunk)
                parts.append(stt_pb2.TranscribePart(stream_id=sid, request=stt_pb2.TranscribeRequest(audio=chunk)))
                if p.audio:
                    self._wake.set()
                    continue  # its end waits until all its audio went
            if p.end or p.cancel:
                parts.append(stt_pb2.TranscribePart(stream_id=sid, end=p.end, cancel=p.cancel))
            del self._pending[sid]
        return stt_pb2.TranscribeBatch(parts=parts)

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._pending:
                    batch = self._batch()
                    if batch.parts:
                        self.messages += 1
                        await self._call.write(batch)
                if self.closing and not self._pending:
                    self._mux.forget(self)
                    await self._call.done_writing()
                    return
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.fail(exc)
        except Exception as exc:  # a write on a call that ended: the reader has (or will have) its status
            self.fail(rpc_error(grpc.StatusCode.UNAVAILABLE, f"stt call write failed: {type(exc).__name__}: {exc}"))

    async def _read_loop(self) -> None:
        try:
            while True:
                batch = await self._call.read()
                if batch is grpc.aio.EOF:
                    break
                for part in batch.parts:
                    stream = self.streams.get(part.stream_id)
                    if stream is None:
                        continue  # cancelled here: what stt had on the way is dropped
                    if part.WhichOneof("part") == "event":
                        stream.events.put_nowait(part.event)
                    else:
                        code = _CODES.get(part.status.code, grpc.StatusCode.UNKNOWN)
                        err = None if code is grpc.StatusCode.OK else rpc_error(code, part.status.details)
                        self.finish(stream, error=err)
            if self.streams:
                self.fail(rpc_error(grpc.StatusCode.UNAVAILABLE, "stt ended the call with streams open"))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.fail(exc)

    def fail(self, exc: grpc.aio.AioRpcError) -> None:
        """The call is broken: every stream on it ends with its status."""
        self._mux.forget(self)
        self.closing = True
        if self.streams:
            log.warning("stt call broke", extra={"code": exc.code().name, "streams": len(self.streams)})
        for stream in list(self.streams.values()):
            self.finish(stream, error=exc)
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._call.cancel()
        self._writer.cancel()

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._call.cancel()
        for task in (self._writer, self._reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class SttMux:
    """The edge process's stt streams over as few TranscribeMany calls as
    `streams_per_call` allows."""

    def __init__(self, stub: stt_pb2_grpc.SttStub, streams_per_call: int = 16, batch_ms: float = 10.0) -> None:
        if streams_per_call < 1:
            raise ValueError(f"streams_per_call must be at least 1, got {streams_per_call}")
        if batch_ms < 0:
            raise ValueError(f"batch_ms must not be negative, got {batch_ms}")
        self.stub = stub
        self.streams_per_call = streams_per_call
        self.batch_s = batch_ms / 1000
        self.calls: list[_MuxCall] = []
        self._retired: set[_MuxCall] = set()
        self._next_id = 0

    def open(self, config: stt_pb2.TranscribeConfig) -> SttStream:
        """A new stream: on a call with room, or on a new call."""
        call = next((c for c in self.calls if not c.closing and len(c.streams) < self.streams_per_call), None)
        if call is None:
            call = _MuxCall(self)
            self.calls.append(call)
        self._next_id = (self._next_id + 1) % (1 << 32)
        return call.open(self._next_id, config)

    def forget(self, call: _MuxCall) -> None:
        """The call takes no new streams (closing or broken); kept until closed."""
        if call in self.calls:
            self.calls.remove(call)
            self._retired.add(call)
            call._reader.add_done_callback(lambda _t: self._retired.discard(call))

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.calls + list(self._retired)), return_exceptions=True)
        self.calls.clear()
        self._retired.clear()
