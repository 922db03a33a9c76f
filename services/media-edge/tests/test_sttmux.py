"""The edge's stt streams over shared TranscribeMany calls (voxmesh_edge.sttmux),
against an in-process TEST DOUBLE of stt over real gRPC: it records every
message it gets, answers each stream's audio with an Interim naming the bytes
so far, a bad sample rate with INVALID_ARGUMENT, `end` with status OK, and
aborts the whole call on request. The real stt's side of TranscribeMany is
tested with its models in services/stt/tests/test_service.py."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from voxmesh.core.metrics import metric
from voxmesh.testing.servers import free_port
from voxmesh.testing.wait import until
from voxmesh.v1 import stt_pb2, stt_pb2_grpc
from voxmesh_edge.sttmux import SttMux, parse_target

BREAK = b"break!"  # audio that makes the double abort the call


class SttManyDouble(stt_pb2_grpc.SttServicer):
    """Test double of stt's TranscribeMany."""

    def __init__(self) -> None:
        self.messages: list[list[stt_pb2.TranscribePart]] = []
        self.configs: list[stt_pb2.TranscribeConfig] = []
        self.audio = 0  # bytes of audio received on open streams
        self.calls = 0

    async def TranscribeMany(self, request_iterator, context):
        self.calls += 1
        received: dict[int, int] = {}
        async for batch in request_iterator:
            self.messages.append(list(batch.parts))
            out = []
            for part in batch.parts:
                sid = part.stream_id
                kind = part.request.WhichOneof("msg")
                if kind == "config":
                    c = part.request.config
                    self.configs.append(c)
                    bad = "sample_rate must be 16000" if c.sample_rate != 16000 else \
                        "turn.max_silence_ms is below min_silence_ms" if c.turn.max_silence_ms < c.turn.min_silence_ms else ""
                    if bad:
                        out.append(stt_pb2.TranscribeEventPart(stream_id=sid, status=stt_pb2.StreamStatus(
                            code=grpc.StatusCode.INVALID_ARGUMENT.value[0], details=bad)))
                        continue
                    received[sid] = 0
                elif kind == "audio":
                    if part.request.audio == BREAK:
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")
                    if sid not in received:
                        continue
                    received[sid] += len(part.request.audio)
                    self.audio += len(part.request.audio)
                    out.append(stt_pb2.TranscribeEventPart(stream_id=sid, event=stt_pb2.TranscribeEvent(
                        interim=stt_pb2.Interim(text=f"{received[sid]} bytes"))))
                if part.end and sid in received:
                    out.append(stt_pb2.TranscribeEventPart(stream_id=sid, status=stt_pb2.StreamStatus(code=0)))
                if part.end or part.cancel:
                    received.pop(sid, None)
            if out:
                yield stt_pb2.TranscribeEventBatch(parts=out)


async def start_double() -> tuple[SttManyDouble, grpc.aio.Server, str]:
    double = SttManyDouble()
    server = grpc.aio.server()
    stt_pb2_grpc.add_SttServicer_to_server(double, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return double, server, f"127.0.0.1:{port}"


@pytest.fixture
async def stt():
    double, server, address = await start_double()
    double.target = address
    try:
        yield double
    finally:
        await server.stop(None)


@pytest.fixture
async def two_stt():
    """Two replicas of the double: ([doubles], [servers], static target)."""
    a, b = await start_double(), await start_double()
    try:
        yield [a[0], b[0]], [a[1], b[1]], f"ipv4:{a[2]},{b[2]}"
    finally:
        for server in (a[1], b[1]):
            await server.stop(None)


def cfg(sample_rate: int = 16000) -> stt_pb2.TranscribeConfig:
    return stt_pb2.TranscribeConfig(session_id="s", sample_rate=sample_rate)


async def texts(stream) -> list[str]:
    return [ev.interim.text async for ev in stream]


def _counter(name: str) -> float:
    return metric(name)._value.get()


async def test_streams_share_a_call_and_a_message_carries_every_stream_s_audio(stt):
    sent0, parts0 = _counter("voxmesh_edge_stt_messages_total"), _counter("voxmesh_edge_stt_parts_total")
    # A wide window (200 ms) so the writes below, ~25 ms in all, fit in it even when
    # a loaded CI machine stalls the loop for a while.
    mux = SttMux(stt.target, batch_ms=200)
    streams = [mux.open(cfg()) for _ in range(3)]
    assert len(mux.calls) == 1
    for n in range(5):  # five chunks of each stream, 5 ms apart: all inside one window
        for i, s in enumerate(streams):
            s.write(bytes([i]) * 640)
        await asyncio.sleep(0.005)
    await until(lambda: len(stt.messages) == 1)
    await asyncio.sleep(0.06)
    assert len(stt.messages) == 1  # one message, not one per chunk
    first = stt.messages[0]
    assert [p.request.WhichOneof("msg") for p in first] == ["config", "audio"] * 3
    assert [len(p.request.audio) for p in first if p.request.audio] == [3200] * 3  # the chunks merged, in order
    assert [p.request.audio[:1] for p in first if p.request.audio] == [b"\0", b"\1", b"\2"]
    assert (_counter("voxmesh_edge_stt_messages_total") - sent0, _counter("voxmesh_edge_stt_parts_total") - parts0) == (1, 3)
    for s in streams:
        s.done_writing()
    got = await asyncio.gather(*(texts(s) for s in streams))
    assert got == [["3200 bytes"]] * 3  # each stream's own events, then its end
    await until(lambda: not mux.calls)  # a call with no streams left closes
    await mux.aclose()


async def test_streams_go_to_the_replica_with_the_fewest_and_a_broken_one_is_avoided(two_stt):
    doubles, servers, target = two_stt
    mux = SttMux(target, batch_ms=5)
    streams = [mux.open(cfg()) for _ in range(6)]
    assert sorted(r.streams for r in mux.replicas.values()) == [3, 3]
    assert len(mux.calls) == 2  # one call per replica
    for s in streams:
        s.write(b"\1" * 640)
    await until(lambda: all(d.messages for d in doubles))
    # Replica 0 goes away: its three streams fail; the sessions reopen theirs,
    # and every new stream goes to the replica that is left.
    doomed = [s for s in streams if s._call.replica.address == target.split(":", 1)[1].split(",")[0]]
    await servers[0].stop(None)
    for s in doomed:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await texts(s)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    moved = [mux.open(cfg()) for _ in doomed]
    assert {s._call.replica.address for s in moved} == {target.rsplit(",", 1)[1]}
    for s in moved:
        s.write(b"\1" * 640)
        s.done_writing()
        assert await texts(s) == ["640 bytes"]
    await mux.aclose()


async def test_a_name_is_resolved_again_and_new_replicas_take_new_streams(two_stt):
    doubles, servers, target = two_stt
    a, b = target.split(":", 1)[1].split(",")
    answers = [[a], [a, b]]

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("stt-headless", 50051)
        return answers[0]

    mux = SttMux("dns:///stt-headless:50051", batch_ms=5, resolve_s=0.02, resolver=resolver)
    first = mux.open(cfg())  # before the first answer: the target as gRPC resolves it
    await until(lambda: a in mux.replicas)
    second = mux.open(cfg())
    assert second._call.replica.address == a
    answers[0] = [a, b]  # scaled up: b has none of this process's streams, so it takes the next
    await until(lambda: b in mux.replicas)
    third = mux.open(cfg())
    assert third._call.replica.address == b
    answers[0] = [b]  # a is gone from the name: nothing new goes there
    await until(lambda: not mux.replicas[a].listed)
    assert {mux.open(cfg())._call.replica.address for _ in range(3)} == {b}
    for s in (first, second, third):
        s.cancel()
    await mux.aclose()


def test_targets_are_read_as_grpc_reads_them():
    assert parse_target("127.0.0.1:50051") == (["127.0.0.1:50051"], None)
    assert parse_target("ipv4:10.0.0.1:5,10.0.0.2:5") == (["10.0.0.1:5", "10.0.0.2:5"], None)
    assert parse_target("dns:///stt-headless.voice.svc.cluster.local:50051") == (None, ("stt-headless.voice.svc.cluster.local", 50051))
    assert parse_target("stt:50051") == (None, ("stt", 50051))
    assert parse_target("[::1]:50051") == (["[::1]:50051"], None)
    assert parse_target("unix:/run/stt.sock") == (["unix:/run/stt.sock"], None)


async def test_no_window_sends_each_chunk_at_once(stt):
    mux = SttMux(stt.target, batch_ms=0)
    s = mux.open(cfg())
    s.write(b"\1" * 640)
    await until(lambda: len(stt.messages) == 1)
    s.write(b"\1" * 640)
    await until(lambda: len(stt.messages) == 2)
    assert [len(p.request.audio) for p in stt.messages[1]] == [640]
    s.cancel()
    await mux.aclose()


async def test_a_stream_s_error_status_ends_that_stream_alone(stt):
    mux = SttMux(stt.target, batch_ms=5)
    bad, good = mux.open(cfg(sample_rate=8000)), mux.open(cfg())
    bad.write(b"\1" * 640)
    good.write(b"\1" * 640)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await texts(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sample_rate" in err.value.details()
    good.write(b"\1" * 640)
    good.done_writing()
    assert await texts(good) == ["640 bytes", "1280 bytes"]
    bad.write(b"\1" * 640)  # a write to an ended stream is dropped, not raised
    await mux.aclose()


async def test_a_broken_call_fails_every_stream_on_it_and_new_streams_get_a_new_call(stt):
    mux = SttMux(stt.target, batch_ms=5)
    a, b = mux.open(cfg()), mux.open(cfg())
    a.write(b"\1" * 640)
    await until(lambda: len(stt.messages) == 1)
    b.write(BREAK)
    for s in (a, b):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await texts(s)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    c = mux.open(cfg())  # what a session does next: a stream on a fresh call (one replica: the same)
    c.write(b"\1" * 640)
    c.done_writing()
    assert await texts(c) == ["640 bytes"]
    assert stt.calls == 2
    await mux.aclose()


async def test_cancel_tells_stt_and_ends_the_stream_without_flush(stt):
    mux = SttMux(stt.target, batch_ms=5)
    a, b = mux.open(cfg()), mux.open(cfg())
    b.write(b"\1" * 640)
    await until(lambda: len(stt.messages) == 1)
    a.cancel()
    b.write(b"\1" * 640)
    b.done_writing()
    assert await texts(b) == ["640 bytes", "1280 bytes"]
    assert await texts(a) == []  # ended at once: what stt still had for it is dropped
    cancels = [p for m in stt.messages for p in m if p.cancel]
    assert [p.stream_id for p in cancels] == [a.id]
    await mux.aclose()


async def test_a_session_whose_turn_settings_stt_refuses_is_heard_with_stt_s_defaults(stt, caplog):
    """An agent config with turn settings stt refuses (INVALID_ARGUMENT) must
    not leave the caller unheard or retry the same refusal for ever: the
    session logs it once and streams on stt's defaults, audio included."""
    import numpy as np

    from voxmesh.v1 import orchestrator_pb2 as opb
    from voxmesh_edge.session import EdgeSession
    from voxmesh_edge.settings import EdgeSettings
    from voxmesh_edge.upstreams import Upstreams

    settings = EdgeSettings(stt_target=stt.target, tts_target="127.0.0.1:1", orchestrator_target="127.0.0.1:1")
    up = Upstreams(settings)
    session = EdgeSession("refused-turn", settings, up)
    session.session_config = opb.SessionConfig(turn=stt_pb2.TurnSettings(min_silence_ms=900, max_silence_ms=300))
    session._configured.set()
    chunk = np.full(640, 1000, np.int16)
    for _ in range(3):
        session._inbound_audio(chunk)  # before the stream opens: queued
    task = asyncio.ensure_future(session._stt_loop())
    try:
        await until(lambda: len(stt.configs) == 2 and stt.audio >= 3 * 1280)
        for _ in range(2):
            session._inbound_audio(chunk)  # once it is open: written straight on
        await until(lambda: stt.audio >= 5 * 1280)
        assert stt.configs[0].turn.max_silence_ms == 300
        assert not stt.configs[1].HasField("turn")
        await asyncio.sleep(0.3)
        assert len(stt.configs) == 2  # no retry loop
        assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == \
            ["stt refused the agent's turn settings; using stt's defaults"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await session.pc.close()
        await up.close()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="batch_ms"):
        SttMux("127.0.0.1:1", batch_ms=-1)
