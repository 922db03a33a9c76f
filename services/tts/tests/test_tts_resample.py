"""SynthesizeConfig.sample_rate with a deterministic backend (a test double):
every sample of each clause comes out, resampled without seams."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import soxr

from voxmesh.testing.servers import free_port, serving_in_process
from voxmesh.v1 import tts_pb2, tts_pb2_grpc
from voxmesh_tts.backends.base import AudioChunk, TtsBackend
from voxmesh_tts.settings import TtsSettings

RATE = 22050


class ToneBackendDouble(TtsBackend):
    """Test double: each clause is 1.3 s of a sweeping tone in 300 ms chunks."""

    name, sample_rate, default_voice = "tone", RATE, "tone"

    def __init__(self) -> None:
        t = np.arange(int(1.3 * RATE)) / RATE
        self.pcm = (8000 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.int16)

    def load(self) -> None:
        pass

    def voices(self) -> tuple[str, ...]:
        return ("tone",)

    async def synthesize(self, text: str, *, voice: str = "", speed: float = 1.0) -> AsyncIterator[AudioChunk]:
        step = int(0.3 * RATE)
        for off in range(0, self.pcm.size, step):
            last = off + step >= self.pcm.size
            yield AudioChunk(pcm=self.pcm[off : off + step].tobytes(), span=(0, len(text)) if last else (0, 0), last=last)


async def test_each_clause_comes_whole_and_seamless_at_the_asked_rate():
    from voxmesh_tts.server import serve

    backend = ToneBackendDouble()
    settings = TtsSettings(port=free_port(), metrics_port=0, host="127.0.0.1", grace_s=1.0)
    async with serving_in_process(lambda stop: serve(settings, stop_event=stop, backend=backend), settings.port) as ch:
        stub = tts_pb2_grpc.TtsStub(ch)

        async def requests():
            yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesizeConfig(session_id="s", sample_rate=48000))
            for cid in (1, 2):
                yield tts_pb2.SynthesizeRequest(clause=tts_pb2.Clause(clause_id=cid, text="hello"))

        chunks = [c async for c in stub.Synthesize(requests())]
    assert {c.sample_rate for c in chunks} == {48000}
    want = soxr.resample(backend.pcm, RATE, 48000, quality="HQ").astype(np.float64)
    for cid in (1, 2):
        got = np.frombuffer(b"".join(c.audio for c in chunks if c.clause_id == cid), dtype="<i2").astype(np.float64)
        assert abs(got.size - want.size) <= 2  # the clause's last chunk flushed the filter
        n = min(got.size, want.size)
        err = np.sqrt(np.mean((got[:n] - want[:n]) ** 2)) / np.sqrt(np.mean(want[:n] ** 2))
        assert err < 0.01  # the same as resampling the clause in one go: no seams


async def test_a_rate_out_of_range_is_refused_with_a_reason():
    from voxmesh_tts.server import serve

    settings = TtsSettings(port=free_port(), metrics_port=0, host="127.0.0.1", grace_s=1.0)
    async with serving_in_process(lambda stop: serve(settings, stop_event=stop, backend=ToneBackendDouble()), settings.port) as ch:
        stub = tts_pb2_grpc.TtsStub(ch)

        async def requests():
            yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesizeConfig(session_id="s", sample_rate=4000))

        try:
            _ = [c async for c in stub.Synthesize(requests())]
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "sample_rate" in exc.details()
        else:
            raise AssertionError("a 4 kHz request was accepted")
