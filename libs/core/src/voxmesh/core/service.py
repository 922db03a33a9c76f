"""gRPC service bootstrap shared by stt, llm, tts and orchestrator.

`run_grpc_service` owns the process lifecycle: uvloop, structured logging,
/metrics, the grpc.health.v1 service, and graceful shutdown. On SIGTERM or
SIGINT the health status flips to NOT_SERVING at once (readiness fails, no new
streams are routed here), live streams get `grace` seconds to finish, then the
process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from voxmesh.core.logging import setup_logging
from voxmesh.core.metrics import init_service_metrics, serve_metrics

log = logging.getLogger(__name__)

# Generous message size: a replayed utterance or a long clause's audio.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Server side: accept those pings. By default a server allows one ping per
    # 5 minutes without data and answers more with GOAWAY "too_many_pings",
    # which broke every quiet Converse stream (no events for ~20 s) and every
    # channel of an idle edge.
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]

# Register servicers on the server; return an optional async cleanup.
Setup = Callable[[grpc.aio.Server], Awaitable[Callable[[], Awaitable[None]] | None]]


async def serve_grpc(
    name: str,
    service_names: list[str],
    setup: Setup,
    port: int,
    metrics_port: int,
    grace: float = 10.0,
    host: str = "0.0.0.0",
    stop_event: asyncio.Event | None = None,
) -> None:
    server = grpc.aio.server(options=GRPC_OPTIONS)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    cleanup = await setup(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise RuntimeError(f"{name}: cannot bind {host}:{port}")
    init_service_metrics(name)
    serve_metrics(metrics_port)
    await server.start()
    for svc in ["", *service_names]:
        await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", extra={"port": bound, "metrics_port": metrics_port, "service_name": name})

    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    await stop.wait()
    log.info("draining", extra={"grace_s": grace})
    await health_servicer.enter_graceful_shutdown()  # every service -> NOT_SERVING
    await server.stop(grace)
    if cleanup is not None:
        await cleanup()
    log.info("stopped")


def run(name: str, main: Callable[[], Awaitable[None]]) -> None:
    """Entry point of a service process: uvloop + JSON logs + main()."""
    setup_logging(name)
    try:
        import uvloop

        uvloop.run(main())
    except KeyboardInterrupt:
        pass
