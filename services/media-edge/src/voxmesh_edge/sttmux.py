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

Placement: a call goes to one stt replica, so the edge places sessions itself
rather than leaving it to gRPC's round robin per call. It keeps one call per
replica it uses (the replicas from the target: a static `ipv4:` list, or a
name resolved every `resolve_s`, e.g. the stt headless Service) and opens each
new stream on the replica with the fewest of this process's streams, skipping
for a while a replica whose call just broke. Balance is per session, as with a
call per session, and a message carries everything this process has for that
replica: many sessions with a few large replicas, less with many small ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable

import grpc

from voxmesh.core.aio import cancel_all
from voxmesh.core.metrics import metric
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

    def __init__(self, mux: SttMux, replica: _Replica, wait_for_ready: bool) -> None:
        self._mux = mux
        self.replica = replica
        self.streams: dict[int, SttStream] = {}
        self._pending: dict[int, _Pending] = {}
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self.closing = False
        self._call = replica.stub.TranscribeMany(wait_for_ready=wait_for_ready)
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
        if self.streams.pop(stream.id, None) is not None:
            self.replica.streams -= 1
        if cancel:
            p = self._part(stream.id)
            p.config, p.audio, p.end, p.cancel = None, bytearray(), False, True
        stream.events.put_nowait(error if error is not None else _END)
        if not self.streams:
            self.closing = True  # no new stream joins; the writer closes the call
            self._wake.set()

    def _batch(self) -> tuple[stt_pb2.TranscribeBatch, int]:
        """The next message, and how many audio parts it carries. Parts are
        added in place (a third of the cost of building each and copying it in)."""
        batch = stt_pb2.TranscribeBatch()
        add = batch.parts.add
        size = audio_parts = 0
        for sid in list(self._pending):
            if size >= _MAX_BATCH_BYTES:
                self._wake.set()  # the rest goes in the next message
                break
            p = self._pending[sid]
            if p.config is not None:
                add(stream_id=sid).request.config.CopyFrom(p.config)
                p.config = None
            if p.audio:
                chunk = bytes(p.audio[:_MAX_PART_BYTES])
                del p.audio[:_MAX_PART_BYTES]
                size += len(chunk)
                audio_parts += 1
                add(stream_id=sid).request.audio = chunk
                if p.audio:
                    self._wake.set()
                    continue  # its end waits until all its audio went
            if p.end or p.cancel:
                add(stream_id=sid, end=p.end, cancel=p.cancel)
            del self._pending[sid]
        return batch, audio_parts

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._pending:
                    batch, audio_parts = self._batch()
                    if batch.parts:
                        metric("voxmesh_edge_stt_messages_total").inc()
                        metric("voxmesh_edge_stt_parts_total").inc(audio_parts)
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
        """The call is broken: every stream on it ends with its status, and
        new streams avoid the replica for a while."""
        self._mux.forget(self)
        self.closing = True
        if self.streams:
            self.replica.down_until = time.monotonic() + self._mux.avoid_s
            log.warning("stt call broke", extra={"code": exc.code().name, "streams": len(self.streams),
                                                 "replica": self.replica.address})
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
        await cancel_all([self._writer, self._reader])


class _Replica:
    """An stt replica this process may use: its channel and its open call."""

    def __init__(self, address: str, options: list) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = stt_pb2_grpc.SttStub(self.channel)
        self.call: _MuxCall | None = None
        self.streams = 0  # this process's open streams on it
        self.down_until = 0.0  # its call broke: avoided until then
        self.listed = True  # in the latest resolution of the target


def parse_target(target: str) -> tuple[list[str] | None, tuple[str, int] | None]:
    """(static addresses, None) or (None, (host, port) to resolve) for a gRPC
    target: `ipv4:a:p,b:p` and IP literals are static; `dns:///host:port` and
    `host:port` are resolved; anything else (a unix socket, say) is one replica."""
    if target.startswith(("ipv4:", "ipv6:")):
        return [a.strip() for a in target.split(":", 1)[1].split(",") if a.strip()], None
    if target.startswith("dns:"):
        rest = target[4:]
        if rest.startswith("//"):  # dns:///host:port or dns://authority/host:port
            rest = rest[2:].split("/", 1)[-1]
    elif ":/" in target or target.startswith(("unix:", "unix-abstract:", "vsock:")):
        return [target], None
    else:
        rest = target
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return [target], None
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None, (host, int(port))
    return [rest], None


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_addresses(host: str, port: int) -> list[str]:
    """The name's addresses now ("ip:port", "[ip6]:port"), as gRPC's dns resolver sees them."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # IPv4 when there is any: "localhost" is 127.0.0.1 and ::1, one server that
    # may listen on one of them only, and a replica that never answers would
    # hold its sessions' streams.
    infos = [i for i in infos if i[0] == socket.AF_INET] or infos
    out = []
    for family, _, _, _, addr in infos:
        a = f"[{addr[0]}]:{addr[1]}" if family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}"
        if a not in out:
            out.append(a)
    return out


class SttMux:
    """The edge process's stt streams: one TranscribeMany call per replica,
    each new stream on the least-loaded replica (see the module doc)."""

    def __init__(self, target: str, options: list | None = None, batch_ms: float = 10.0, resolve_s: float = 5.0,
                 avoid_s: float = 2.0, resolver: Resolver = resolve_addresses) -> None:
        if batch_ms < 0:
            raise ValueError(f"batch_ms must not be negative, got {batch_ms}")
        self.batch_s = batch_ms / 1000
        self.avoid_s = avoid_s
        self._options = list(options or [])
        self._resolve_s = resolve_s
        self._resolver = resolver
        self.replicas: dict[str, _Replica] = {}
        self._retired: set[_MuxCall] = set()  # calls closing or broken, until they are done
        self._next_id = 0
        static, self._name = parse_target(target)
        self._target = target
        self._resolving: asyncio.Task | None = None
        self._resolve_failed = False
        for address in static or []:
            self.replicas[address] = _Replica(address, self._options)

    def open(self, config: stt_pb2.TranscribeConfig) -> SttStream:
        """A new stream on the replica with the fewest of this process's streams."""
        if self._name is not None and self._resolving is None:
            self._resolving = asyncio.ensure_future(self._resolve_loop())
        replica, choices = self._pick()
        call = replica.call
        if call is None or call.closing:
            if call is not None:
                self.forget(call)
            # With one replica, its call waits for it (a restart, say) rather than
            # failing in a loop; with several, one that cannot be reached fails
            # the call at once and its streams move to another.
            call = replica.call = _MuxCall(self, replica, wait_for_ready=choices == 1)
        self._next_id = (self._next_id + 1) % (1 << 32)
        replica.streams += 1
        return call.open(self._next_id, config)

    def _pick(self) -> tuple[_Replica, int]:
        listed = [r for r in self.replicas.values() if r.listed]
        if not listed:
            # Not resolved yet (or resolving to nothing): the target as gRPC
            # resolves it, balanced per call, until the name resolves.
            if self._target not in self.replicas:
                self.replicas[self._target] = _Replica(self._target, self._options)
            listed = [self.replicas[self._target]]
        now = time.monotonic()
        usable = [r for r in listed if r.down_until <= now] or listed
        least = min(r.streams for r in usable)
        return random.choice([r for r in usable if r.streams == least]), len(listed)

    async def _resolve_loop(self) -> None:
        host, port = self._name
        while True:
            try:
                addresses = await self._resolver(host, port)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._resolve_failed:
                    log.warning("stt target did not resolve; keeping the replicas known", extra={"target": self._target, "error": str(exc)})
                self._resolve_failed = True
            else:
                self._resolve_failed = False
                self._update(addresses)
            await asyncio.sleep(self._resolve_s)

    def _update(self, addresses: list[str]) -> None:
        """The replicas now listed: new ones take new streams at once; one no
        longer listed takes none, and goes once its streams have ended."""
        if not addresses:
            return  # nothing ready right now: keep what we had (its calls wait or fail on their own)
        for address in addresses:
            if address in self.replicas:
                self.replicas[address].listed = True
            else:
                self.replicas[address] = _Replica(address, self._options)
        for address, r in list(self.replicas.items()):
            if address not in addresses:
                r.listed = False
                if r.streams == 0 and r.call is None:
                    del self.replicas[address]
                    asyncio.ensure_future(r.channel.close(grace=5))

    @property
    def calls(self) -> list[_MuxCall]:
        """The calls taking new streams: one per replica in use."""
        return [r.call for r in self.replicas.values() if r.call is not None]

    def forget(self, call: _MuxCall) -> None:
        """The call takes no new streams (closing or broken); kept until closed."""
        if call.replica.call is call:
            call.replica.call = None
        if call not in self._retired:
            self._retired.add(call)
            call._reader.add_done_callback(lambda _t: self._retired.discard(call))

    async def aclose(self) -> None:
        if self._resolving is not None:
            await cancel_all([self._resolving])
        await asyncio.gather(*(c.aclose() for c in self.calls + list(self._retired)), return_exceptions=True)
        for r in self.replicas.values():
            r.call = None
        self._retired.clear()
        await asyncio.gather(*(r.channel.close() for r in self.replicas.values()), return_exceptions=True)
