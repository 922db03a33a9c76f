"""gRPC TEST DOUBLES of stt, tts and the orchestrator, for the edge capacity
benchmark only: they stand in for the real services so that the models do not
eat the cores the edge is measured on. They speak the real protocols over real
gRPC, so the edge does all of its real work (decode, resample, stt stream,
Converse stream, tts stream, playout, encode); only the model work is absent.

- SttDouble: takes the audio, answers nothing (no speech events, so no barge-in
  pauses the agent), and finds the benchmark's marker bursts in the 16 kHz PCM
  it receives: their arrival times give the receive-path delay, and the sample
  distance between consecutive markers reveals any lost inbound audio. It also
  counts the samples, the messages, and the digital silence (all-zero 10 ms
  windows: the edge's fill of a DTX stream's timestamp gaps).
- OrchestratorDouble: sends the session config, then every `cycle_s` one agent
  reply (one clause + end of reply): the agent speaks about half the time.
- TtsDouble: answers each clause at once with `reply_s` of speech in 200 ms
  chunks, as a real streaming tts would, at the rate the config asks for
  (the edge asks for 48 kHz; 22.05 kHz, Piper's own, otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import soxr

from voxmesh.v1 import orchestrator_pb2 as opb
from voxmesh.v1 import orchestrator_pb2_grpc, stt_pb2, stt_pb2_grpc, tts_pb2, tts_pb2_grpc

STT_RATE = 16000
TTS_RATE = 22050
MARKER_DBFS = -9.0  # a 20 ms window this loud is a marker (the speech is far quieter)


@dataclass
class SttStream:
    samples: int = 0
    zero_samples: int = 0  # in all-zero 10 ms windows
    messages: int = 0  # audio messages received
    markers: list[tuple[float, int]] = field(default_factory=list)  # (arrival monotonic, sample offset)
    _in_marker: bool = False


class SttDouble(stt_pb2_grpc.SttServicer):
    """Test double: consumes audio, detects marker bursts, emits no events."""

    def __init__(self) -> None:
        self.streams: dict[str, SttStream] = defaultdict(SttStream)
        self.batches = 0  # TranscribeMany messages received, all calls
        self._threshold = (10 ** (MARKER_DBFS / 20) * 32768) ** 2

    async def Transcribe(self, request_iterator, context):
        sid = ""
        async for req in request_iterator:
            if req.WhichOneof("msg") == "config":
                sid = req.config.session_id
                continue
            self._audio(self.streams[sid], req.audio)
        return
        yield  # an async generator that never answers

    async def TranscribeMany(self, request_iterator, context):
        """The edge's way: many sessions' streams on a call. A stream's `end`
        is answered with status OK (the stream's last part), as stt does."""
        sessions: dict[int, str] = {}
        ends: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            async for batch in request_iterator:
                self.batches += 1
                for part in batch.parts:
                    if part.request.WhichOneof("msg") == "config":
                        sessions[part.stream_id] = part.request.config.session_id
                    elif part.request.WhichOneof("msg") == "audio":
                        self._audio(self.streams[sessions[part.stream_id]], part.request.audio)
                    if part.end:
                        ends.put_nowait(part.stream_id)
            ends.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (sid := await ends.get()) is not None:
                yield stt_pb2.TranscribeEventBatch(parts=[
                    stt_pb2.TranscribeEventPart(stream_id=sid, status=stt_pb2.StreamStatus(code=0))])
        finally:
            reader.cancel()

    def _audio(self, st: SttStream, audio: bytes) -> None:
        now = time.monotonic()
        pcm = np.frombuffer(audio, dtype="<i2")
        st.messages += 1
        # 10 ms windows: a marker is 20 ms long, so at least one window is inside it.
        w = pcm[: pcm.size - pcm.size % 160].reshape(-1, 160)
        if w.size:
            loud = np.mean(w.astype(np.float32) ** 2, axis=1) > self._threshold
            onset = loud & ~np.concatenate(([st._in_marker], loud[:-1]))
            for i in np.flatnonzero(onset):
                st.markers.append((now, st.samples + int(i) * 160))
            st._in_marker = bool(loud[-1])
            # All-zero windows: digital silence. With DTX callers mostly the
            # edge's fill of the RTP timestamp gaps (and the decoded DTX packets);
            # with continuous callers, the loop's own silences, decoded.
            st.zero_samples += 160 * int(np.count_nonzero(~w.any(axis=1)))
        st.samples += pcm.size


class TtsDouble(tts_pb2_grpc.TtsServicer):
    """Test double: `reply_s` of the benchmark speech per clause, at once, at
    the rate the config asks for (as the real service does, resampled here
    once per rate, not per stream: the real service's resampling is its own
    CPU, not the edge's)."""

    def __init__(self, speech_22k: np.ndarray, reply_s: float) -> None:
        n = int(reply_s * TTS_RATE)
        reps = -(-n // speech_22k.size)
        self.speech = np.tile(speech_22k, reps)[:n].astype(np.int16)
        self._audio: dict[int, bytes] = {}

    def audio(self, rate: int) -> bytes:
        if rate not in self._audio:
            pcm = self.speech if rate == TTS_RATE else soxr.resample(self.speech, TTS_RATE, rate).astype(np.int16)
            self._audio[rate] = pcm.astype("<i2").tobytes()
        return self._audio[rate]

    async def Synthesize(self, request_iterator, context):
        rate = TTS_RATE
        async for req in request_iterator:
            if req.WhichOneof("msg") == "config":
                rate = req.config.sample_rate or TTS_RATE
                continue
            c = req.clause
            n = len(c.text)
            audio, chunk = self.audio(rate), rate // 5 * 2  # 200 ms of s16
            for off in range(0, len(audio), chunk):
                last = off + chunk >= len(audio)
                a, b = off * n // len(audio), (off + chunk) * n // len(audio) if not last else n
                yield tts_pb2.SynthesizeChunk(
                    clause_id=c.clause_id, audio=audio[off : off + chunk], sample_rate=rate,
                    span={"start": a, "end": b}, clause_done=last,
                )


class OrchestratorDouble(orchestrator_pb2_grpc.OrchestratorServicer):
    """Test double: config first, then one spoken reply every `cycle_s`."""

    TEXT = "Your order four two one nine is out for delivery and should arrive before six this evening."

    def __init__(self, cycle_s: float) -> None:
        self.cycle_s = cycle_s
        self.playback_events = 0

    async def Converse(self, request_iterator, context):
        first = await request_iterator.__anext__()
        sid = first.start.session_id

        async def consume() -> None:
            async for ev in request_iterator:
                if ev.WhichOneof("event") == "playback":
                    self.playback_events += 1

        reader = asyncio.ensure_future(consume())
        try:
            yield opb.AgentCommand(session_config=opb.SessionConfig(agent="bench"))
            # Stagger replies over the cycle so sessions do not all start speaking together.
            await asyncio.sleep((hash(sid) % 1000) / 1000 * self.cycle_s)
            n = 0
            while True:
                n += 1
                turn = f"t{n}"
                yield opb.AgentCommand(say=opb.Say(turn_id=turn, clause_id=0, text=self.TEXT))
                yield opb.AgentCommand(end_of_reply=opb.EndOfReply(turn_id=turn))
                await asyncio.sleep(self.cycle_s)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


async def serve_doubles(port: int, speech_22k: np.ndarray, reply_s: float, cycle_s: float):
    """Start all three doubles on one gRPC server; returns (server, stt double)."""
    import grpc

    from voxmesh.core.service import GRPC_OPTIONS

    server = grpc.aio.server(options=GRPC_OPTIONS)
    stt = SttDouble()
    stt_pb2_grpc.add_SttServicer_to_server(stt, server)
    tts_pb2_grpc.add_TtsServicer_to_server(TtsDouble(speech_22k, reply_s), server)
    orch = OrchestratorDouble(cycle_s)
    orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(orch, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, stt, orch
