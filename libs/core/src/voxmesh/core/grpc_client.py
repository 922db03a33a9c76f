"""gRPC channels to peer services, with the same options as the servers."""

from __future__ import annotations

import grpc

from voxmesh.core.service import GRPC_OPTIONS


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
