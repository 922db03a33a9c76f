"""Fixtures for the llm tests: one real SmolLM2 model per test session, and an
in-process llm gRPC server per test that shares it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from voxmesh.core.grpc_client import channel
from voxmesh.testing.servers import free_port
from voxmesh.v1 import llm_pb2_grpc

from voxmesh_llm.settings import LlmSettings


@pytest.fixture(scope="session")
def llama_backend():
    from voxmesh_llm.backends.llama_cpp import LlamaCppBackend

    backend = LlamaCppBackend(LlmSettings(metrics_port=0))
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


@pytest.fixture
async def llm_stub(llama_backend):
    from voxmesh_llm.server import serve

    settings = LlmSettings(port=free_port(), metrics_port=0, host="127.0.0.1", grace_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop_event=stop, backend=llama_backend))
    ch = channel(f"127.0.0.1:{settings.port}")
    try:
        await asyncio.wait_for(ch.channel_ready(), 10)
        yield llm_pb2_grpc.LlmStub(ch)
    finally:
        await ch.close()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
