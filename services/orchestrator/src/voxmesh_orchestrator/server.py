"""The Orchestrator gRPC service: one Converse stream per session.

A stream that cannot go on ends with a status the edge acts on: UNAVAILABLE
(Redis unreachable, or this replica is draining) means reconnect, and any
replica takes the session over from Redis; FAILED_PRECONDITION means another
stream took the session over, so this one is stale. On SIGTERM each stream is
handed off as soon as its conversation is idle (no reply under way), so a
rolling restart moves sessions between turns rather than at the grace deadline.
"""

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
from voxmesh.v1 import orchestrator_pb2_grpc

from voxmesh_orchestrator.agent import AgentConfig, load_agent
from voxmesh_orchestrator.conversation import Conversation
from voxmesh_orchestrator.llm_client import LlmClient
from voxmesh_orchestrator.settings import OrchestratorSettings
from voxmesh_orchestrator.store import SessionStore, Superseded
from voxmesh_orchestrator.tools import build_tools

log = logging.getLogger(__name__)


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, settings: OrchestratorSettings, store: SessionStore, llm: LlmClient, draining: asyncio.Event | None = None) -> None:
        self.settings = settings
        self.store = store
        self.llm = llm
        self._agents: dict[str, AgentConfig] = {}
        # Set on SIGTERM (serve_grpc's stop event): hand live streams off.
        self.draining = draining or asyncio.Event()

    async def DeleteSession(self, request: opb.DeleteSessionRequest, context: grpc.aio.ServicerContext) -> opb.DeleteSessionResponse:
        """Erase every key of one session (retention, right to erasure). A live
        Converse of it is fenced out by the deleted epoch and ends."""
        if not request.session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
        deleted = await self.store.delete_session(request.session_id)
        log.info("session data deleted", extra={"session": request.session_id, "keys": deleted})
        return opb.DeleteSessionResponse(session_id=request.session_id, deleted_keys=deleted)

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
        conv = Conversation(start.session_id, agent, build_tools(agent.tools, agent.orders_path), self.store, self.llm, out.put,
                            replica=self.settings.pod_name)
        gauge = metric("voxmesh_orchestrator_sessions")
        gauge.inc()
        tasks: set[asyncio.Task] = set()

        ending: list[tuple[grpc.StatusCode, str]] = []

        def end(code: grpc.StatusCode, why: str) -> None:
            if not ending:
                ending.append((code, why))
            out.put_nowait(None)

        async def pump() -> None:
            try:
                async for event in request_iterator:
                    await conv.handle(event)
            except Superseded:
                end(grpc.StatusCode.FAILED_PRECONDITION, "superseded: another stream serves this session")
            except Exception as exc:  # Redis unreachable, most likely: any replica can resume it
                log.warning("conversation failed; the edge will reconnect", extra={"error": f"{type(exc).__name__}: {exc}"})
                end(grpc.StatusCode.UNAVAILABLE, f"conversation failed: {type(exc).__name__}")
            finally:
                await out.put(None)

        async def watch() -> None:
            await conv.superseded.wait()
            end(grpc.StatusCode.FAILED_PRECONDITION, "superseded: another stream serves this session")

        async def hand_off() -> None:
            await self.draining.wait()
            while conv.busy():
                await asyncio.sleep(0.05)
            end(grpc.StatusCode.UNAVAILABLE, "draining: reconnect to another replica")

        try:
            try:
                # The session is loaded (and any pending reply restarted) before
                # the first command goes out: the edge takes that first command
                # as "the conversation is live again" when it reconnects.
                await conv.start(start.resumed)
            except Exception as exc:
                log.warning("cannot load the session", extra={"error": f"{type(exc).__name__}: {exc}"})
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot load the session: {type(exc).__name__}")
            yield opb.AgentCommand(session_config=opb.SessionConfig(
                agent=agent.name, voice=agent.voice, turn=agent.turn.to_proto(),
            ))
            spawn(pump(), tasks, "converse-in")
            spawn(watch(), tasks, "converse-fence")
            spawn(hand_off(), tasks, "converse-drain")
            while (cmd := await out.get()) is not None:
                yield cmd
            if ending:
                await context.abort(*ending[0])
        finally:
            gauge.dec()
            await cancel_all(tasks)
            await conv.close()
            log.info("converse closed")


async def follow_llm_membership(settings: OrchestratorSettings, llm: LlmClient) -> None:
    """Keep the llm ring on the ready pods of the llm Service."""
    from voxmesh.core.routing.membership import EndpointSliceMembership

    async with EndpointSliceMembership(settings.llm_service, settings.namespace or None, port_name=settings.llm_port_name) as members:
        async for snapshot in members.changes():
            llm.set_members({name: m.address for name, m in snapshot.ready.items()})
            log.info("llm replicas", extra={"replicas": len(snapshot.ready)})


async def main() -> None:
    settings = from_env(OrchestratorSettings, "VOXMESH_ORCHESTRATOR")
    store = SessionStore.from_url(settings.redis_url, settings.session_ttl_s)
    llm = LlmClient(settings.llm_targets)
    load_agent(settings.agent)  # fail at start, not on the first call, if the config is broken

    stop = asyncio.Event()

    membership_task = None
    if settings.llm_membership == "kubernetes":
        membership_task = asyncio.get_running_loop().create_task(follow_llm_membership(settings, llm))
    elif settings.llm_membership != "static":
        raise ValueError(f"VOXMESH_ORCHESTRATOR_LLM_MEMBERSHIP must be static or kubernetes, not {settings.llm_membership!r}")

    async def setup(server: grpc.aio.Server):
        orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(OrchestratorServicer(settings, store, llm, draining=stop), server)

        async def cleanup() -> None:
            if membership_task is not None:
                membership_task.cancel()
            await llm.close()
            await store.close()

        return cleanup

    await serve_grpc("orchestrator", ["voxmesh.v1.Orchestrator"], setup, settings.port, settings.metrics_port, settings.drain_grace_s,
                     stop_event=stop)
