"""Fixtures for the llm tests: one real SmolLM2 model per test session, and an
in-process llm gRPC server per test that shares it."""

from __future__ import annotations

import asyncio

import pytest

from voxmesh.testing.servers import free_port, serving_in_process
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
    serve_it = lambda stop: serve(settings, stop_event=stop, backend=llama_backend)  # noqa: E731
    async with serving_in_process(serve_it, settings.port) as ch:
        yield llm_pb2_grpc.LlmStub(ch)
