"""Helpers for the stt tests: a real gRPC client that streams PCM in paced pieces."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from voxmesh.v1 import stt_pb2, stt_pb2_grpc


@dataclass
class Received:
    kind: str
    msg: object
    wall: float  # seconds since the first audio byte was sent
    sent_ms: int  # audio ms sent when it arrived


@dataclass
class Run:
    events: list[Received] = field(default_factory=list)

    def of(self, kind: str) -> list:
        return [e.msg for e in self.events if e.kind == kind]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def config(**kw) -> stt_pb2.TranscribeRequest:
    turn = kw.pop("turn", None)
    cfg = stt_pb2.TranscribeConfig(session_id=kw.pop("session_id", "test"), sample_rate=kw.pop("sample_rate", 16000), language="en", **kw)
    if turn:
        cfg.turn.CopyFrom(stt_pb2.TurnSettings(**turn))
    return stt_pb2.TranscribeRequest(config=cfg)


async def transcribe(
    target: str,
    pcm: np.ndarray,
    *,
    chunk_ms: int = 20,
    speed: float = 1.0,
    chunk_bytes: int | None = None,
    **cfg,
) -> Run:
    """Stream int16 `pcm` in chunks paced at `speed` x real time, then half-close;
    collect every event with its arrival time."""
    run = Run()
    data = np.asarray(pcm, dtype="<i2").tobytes()
    step = chunk_bytes or chunk_ms * 32
    sent = {"bytes": 0}
    t0 = time.monotonic()

    async def requests():
        yield config(**cfg)
        for i in range(0, len(data), step):
            piece = data[i : i + step]
            # pace on the audio clock: piece i leaves when its audio would have been captured
            due = t0 + (i + len(piece)) / 32000 / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent["bytes"] += len(piece)
            yield stt_pb2.TranscribeRequest(audio=piece)

    async with grpc.aio.insecure_channel(target) as ch:
        stub = stt_pb2_grpc.SttStub(ch)
        async for ev in stub.Transcribe(requests()):
            kind = ev.WhichOneof("event")
            run.events.append(Received(kind, getattr(ev, kind), time.monotonic() - t0, sent["bytes"] // 32))
    return run
