"""The Llm gRPC service: Generate streams one reply.

Cancelling the call (client cancel, deadline, closed connection) makes gRPC cancel
the handler task; the backend iterator is closed right there (aclosing), which stops
the engine within one decode step.

Request fields at 0 (proto3 cannot tell unset from 0): max_tokens -> the service
default; temperature 0 -> greedy decoding; top_p 0 -> the service default; seed 0 ->
a random seed.

assistant_prefix (non-empty) continues an assistant reply: the chunks carry only
the text after it, and every chunk says `continued` so the caller knows the prefix
was honoured (an older llm ignores the field and would answer from the start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

import grpc

from voxmesh.core.logging import session_id_var
from voxmesh.core.metrics import metric
from voxmesh.core.service import serve_grpc
from voxmesh.v1 import llm_pb2, llm_pb2_grpc

from voxmesh_llm.backends import create_backend
from voxmesh_llm.backends.base import GenerateParams, InvalidRequest, LlmBackend, Message, Overloaded
from voxmesh_llm.settings import LlmSettings

log = logging.getLogger(__name__)

SERVICE_NAME = llm_pb2.DESCRIPTOR.services_by_name["Llm"].full_name
ROLES = ("system", "user", "assistant", "tool")


def to_params(req: llm_pb2.GenerateRequest, settings: LlmSettings, received_at: float) -> GenerateParams:
    """Validate a request and apply the service defaults; InvalidRequest says why not."""
    if not req.messages:
        raise InvalidRequest("messages is empty: send at least one ChatMessage")
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise InvalidRequest(f"messages[{i}].role is {m.role!r}; expected one of {', '.join(ROLES)}")
    if req.max_tokens < 0:
        raise InvalidRequest(f"max_tokens must be >= 0 (0 = default {settings.default_max_tokens}); got {req.max_tokens}")
    if not math.isfinite(req.temperature) or req.temperature < 0 or req.temperature > 5:
        raise InvalidRequest(f"temperature must be within [0, 5] (0 = greedy); got {req.temperature}")
    if not math.isfinite(req.top_p) or req.top_p < 0 or req.top_p > 1:
        raise InvalidRequest(f"top_p must be within [0, 1] (0 = default {settings.default_top_p}); got {req.top_p}")
    if req.grammar and req.json_schema:
        raise InvalidRequest("set grammar or json_schema, not both")
    return GenerateParams(
        messages=tuple(Message(m.role, m.content, m.name) for m in req.messages),
        max_tokens=req.max_tokens or settings.default_max_tokens,
        temperature=req.temperature,
        top_p=req.top_p or settings.default_top_p,
        stop=tuple(s for s in req.stop if s),
        grammar=req.grammar,
        json_schema=req.json_schema,
        seed=req.seed or None,
        assistant_prefix=req.assistant_prefix,
        session_id=req.session_id,
        request_id=req.request_id,
        received_at=received_at,
    )


class LlmServicer(llm_pb2_grpc.LlmServicer):
    def __init__(self, backend: LlmBackend, settings: LlmSettings) -> None:
        self.backend = backend
        self.settings = settings
        self._requests = metric("voxmesh_llm_requests_total")
        self._errors = metric("voxmesh_errors_total")

    async def Generate(
        self, request: llm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.GenerateChunk]:
        received = time.perf_counter()
        session_id_var.set(request.session_id or None)
        outcome = "error"
        try:
            params = to_params(request, self.settings, received)
            async with contextlib.aclosing(self.backend.generate(params)) as pieces:
                async for piece in pieces:
                    if piece.finish_reason:
                        outcome = piece.finish_reason
                    yield llm_pb2.GenerateChunk(
                        text=piece.text,
                        done=bool(piece.finish_reason),
                        finish_reason=piece.finish_reason,
                        prompt_tokens=piece.prompt_tokens,
                        completion_tokens=piece.completion_tokens,
                        continued=bool(params.assistant_prefix),
                    )
        except InvalidRequest as exc:
            outcome = "invalid"
            self._errors.labels(where="llm_bad_request").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            outcome = "overloaded"
            self._errors.labels(where="llm_overloaded").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except asyncio.CancelledError:
            outcome = "cancelled"
            log.info("generate cancelled by caller", extra={"request_id": request.request_id})
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            self._errors.labels(where="llm_generate").inc()
            log.exception("generate failed", extra={"request_id": request.request_id})
            await context.abort(grpc.StatusCode.INTERNAL, "generation failed")
        finally:
            self._requests.labels(outcome=outcome).inc()


async def serve(settings: LlmSettings, stop_event: asyncio.Event | None = None, backend: LlmBackend | None = None) -> None:
    """Run the llm service until SIGTERM/SIGINT (or stop_event); `backend` lets a test
    share one loaded model between servers."""

    async def setup(server: grpc.aio.Server):
        nonlocal backend
        owned = backend is None
        if backend is None:
            backend = create_backend(settings)
            await backend.start()
        llm_pb2_grpc.add_LlmServicer_to_server(LlmServicer(backend, settings), server)

        async def cleanup() -> None:
            if owned:
                await backend.close()

        return cleanup

    await serve_grpc(
        "llm", [SERVICE_NAME], setup, port=settings.port, metrics_port=settings.metrics_port,
        grace=settings.grace_s, host=settings.host, stop_event=stop_event,
    )
