"""Fixtures for the tts tests: one real Piper voice per test session, and an
in-process tts gRPC server per test that shares it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from voxmesh.core.grpc_client import channel
from voxmesh.testing.servers import free_port
from voxmesh.v1 import tts_pb2_grpc

from voxmesh_tts.settings import TtsSettings


@pytest.fixture(scope="session")
def piper_backend():
    from voxmesh_tts.backends.piper import PiperBackend

    backend = PiperBackend(TtsSettings(metrics_port=0))
    backend.load()
    yield backend
    backend._executor.shutdown(wait=True)


@pytest.fixture
async def tts_stub(piper_backend):
    from voxmesh_tts.server import serve

    settings = TtsSettings(port=free_port(), metrics_port=0, host="127.0.0.1", grace_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop_event=stop, backend=piper_backend))
    ch = channel(f"127.0.0.1:{settings.port}")
    try:
        await asyncio.wait_for(ch.channel_ready(), 10)
        yield tts_pb2_grpc.TtsStub(ch)
    finally:
        await ch.close()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

