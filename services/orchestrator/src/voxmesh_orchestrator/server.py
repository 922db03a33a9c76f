"""The Orchestrator gRPC service: one Converse stream per session."""

from __future__ import annotations

import asyncio
import logging

import grpc

from voxmesh.core.aio import cancel_all, spawn
from voxmesh.core.logging import session_id_var
from voxmesh.core.metrics import metric
from voxmesh.core.service import serve_grpc
from voxmesh.core.settings import from_env
from voxmesh.v1 import orchestrator_pb2 as opb
from voxmesh.v1 import orchestrator_pb2_grpc, stt_pb2

from voxmesh_orchestrator.agent import AgentConfig, load_agent
from voxmesh_orchestrator.conversation import Conversation
from voxmesh_orchestrator.llm_client import LlmClient
from voxmesh_orchestrator.settings import OrchestratorSettings
from voxmesh_orchestrator.store import SessionStore
from voxmesh_orchestrator.tools import build_tools

log = logging.getLogger(__name__)


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, settings: OrchestratorSettings, store: SessionStore, llm: LlmClient) -> None:
        self.settings = settings
        self.store = store
        self.llm = llm
        self._agents: dict[str, AgentConfig] = {}

    def agent(self, name: str) -> AgentConfig:
        name = name or self.settings.agent
        if name not in self._agents:
            self._agents[name] = load_agent(name)
        return self._agents[name]

    async def Converse(self, request_iterator, context: grpc.aio.ServicerContext):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("event") != "start" or not first.start.session_id:
            metric("voxmesh_errors_total").labels(where="orchestrator_converse").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first EdgeEvent must be `start` with a session_id")
        start = first.start
        session_id_var.set(start.session_id)
        try:
            agent = self.agent(start.agent)
        except Exception as exc:  # unknown agent or a broken config file
            metric("voxmesh_errors_total").labels(where="orchestrator_agent").inc()
            log.warning("bad agent config", extra={"agent": start.agent, "error": str(exc)})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"agent {start.agent!r}: {exc}")
        out: asyncio.Queue[opb.AgentCommand | None] = asyncio.Queue()
        conv = Conversation(start.session_id, agent, build_tools(agent.tools, agent.orders_path), self.store, self.llm, out.put)
        gauge = metric("voxmesh_orchestrator_sessions")
        gauge.inc()
        tasks: set[asyncio.Task] = set()

        async def pump() -> None:
            try:
                async for event in request_iterator:
                    await conv.handle(event)
            finally:
                await out.put(None)

        try:
            t = agent.turn
            yield opb.AgentCommand(session_config=opb.SessionConfig(
                agent=agent.name, voice=agent.voice,
                turn=stt_pb2.TurnSettings(
                    vad_threshold=t.vad_threshold, min_speech_ms=t.min_speech_ms, min_silence_ms=t.min_silence_ms,
                    max_silence_ms=t.max_silence_ms, eou_threshold=t.eou_threshold),
            ))
            await conv.start(start.resumed)
            spawn(pump(), tasks, "converse-in")
            while (cmd := await out.get()) is not None:
                yield cmd
        finally:
            gauge.dec()
            await cancel_all(tasks)
            await conv.close()
            log.info("converse closed")


async def main() -> None:
    settings = from_env(OrchestratorSettings, "VOXMESH_ORCHESTRATOR")
    store = SessionStore.from_url(settings.redis_url, settings.session_ttl_s)
    llm = LlmClient(settings.llm_targets)
    load_agent(settings.agent)  # fail at start, not on the first call, if the config is broken

    async def setup(server: grpc.aio.Server):
        orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(OrchestratorServicer(settings, store, llm), server)

        async def cleanup() -> None:
            await llm.close()
            await store.close()

        return cleanup

    await serve_grpc("orchestrator", ["voxmesh.v1.Orchestrator"], setup, settings.port, settings.metrics_port, settings.drain_grace_s)
