"""Fixtures for the tts tests: one real Piper voice per test session, and an
in-process tts gRPC server per test that shares it."""

from __future__ import annotations


import pytest

from voxmesh.testing.servers import free_port, serving_in_process
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
    serve_it = lambda stop: serve(settings, stop_event=stop, backend=piper_backend)  # noqa: E731
    async with serving_in_process(serve_it, settings.port) as ch:
        yield tts_pb2_grpc.TtsStub(ch)

