"""gRPC stubs to the services behind the edge, one channel per process shared
by every session. stt and tts are balanced per stream (round robin over the
resolved addresses); the orchestrator is stateless per call."""

from __future__ import annotations

import grpc

from voxmesh.core.service import GRPC_OPTIONS
from voxmesh.v1 import orchestrator_pb2_grpc, stt_pb2_grpc, tts_pb2_grpc
from voxmesh_edge.settings import EdgeSettings

_BALANCED = GRPC_OPTIONS + [("grpc.lb_policy_name", "round_robin")]


class Upstreams:
    def __init__(self, settings: EdgeSettings) -> None:
        self._channels = [
            grpc.aio.insecure_channel(settings.stt_target, options=_BALANCED),
            grpc.aio.insecure_channel(settings.tts_target, options=_BALANCED),
            grpc.aio.insecure_channel(settings.orchestrator_target, options=_BALANCED),
        ]
        self.stt = stt_pb2_grpc.SttStub(self._channels[0])
        self.tts = tts_pb2_grpc.TtsStub(self._channels[1])
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorStub(self._channels[2])

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()
