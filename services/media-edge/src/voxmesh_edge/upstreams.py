"""gRPC stubs to the services behind the edge, one channel per process shared
by every session. tts streams are balanced per stream (round robin over the
resolved addresses); the sessions' stt streams go many to a call, one call per
stt replica, placed by the edge (sttmux); the orchestrator is stateless per call. A target may list
several replicas (`ipv4:10.0.0.1:50054,10.0.0.2:50054`, or a headless Service
name the dns resolver expands): round_robin skips one whose connection broke,
so a stream reopened after a replica died lands on a live one."""

from __future__ import annotations

import grpc

from voxmesh.core.service import GRPC_OPTIONS
from voxmesh.v1 import orchestrator_pb2_grpc, tts_pb2_grpc
from voxmesh_edge.settings import EdgeSettings
from voxmesh_edge.sttmux import SttMux

_BALANCED = GRPC_OPTIONS + [
    ("grpc.lb_policy_name", "round_robin"),
    # A replica that died and came back is used again within ~2 s (gRPC's
    # default reconnect backoff grows to minutes), so a later loss of its
    # sibling still finds a live replica to fail over to.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class Upstreams:
    def __init__(self, settings: EdgeSettings) -> None:
        self._channels = [
            grpc.aio.insecure_channel(settings.tts_target, options=_BALANCED),
            grpc.aio.insecure_channel(settings.orchestrator_target, options=_BALANCED),
        ]
        self.stt = SttMux(settings.stt_target, _BALANCED, batch_ms=settings.stt_batch_ms, resolve_s=settings.stt_resolve_s)
        self.tts = tts_pb2_grpc.TtsStub(self._channels[0])
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorStub(self._channels[1])

    async def close(self) -> None:
        await self.stt.aclose()
        for ch in self._channels:
            await ch.close()
