"""Streaming calls to the llm pool, with per-session replica affinity.

A session's calls go to the same llm replica (its prompt prefix stays in that
engine's KV cache); when that replica fails, the next one in the session's
ring order takes over.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from voxmesh.core.grpc_client import channel
from voxmesh.core.routing.ring import Ring
from voxmesh.v1 import common_pb2, llm_pb2, llm_pb2_grpc

log = logging.getLogger(__name__)

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


class LlmError(RuntimeError):
    pass


class PrefixUnsupported(LlmError):
    """The llm replica did not continue the assistant prefix (built before
    assistant_prefix existed, it answered from the start). Raised before any
    text is yielded: the caller can still regenerate the reply instead."""


class LlmClient:
    def __init__(self, targets: tuple[str, ...] | list[str]) -> None:
        if not targets:
            raise ValueError("no llm targets")
        self._stubs: dict[str, llm_pb2_grpc.LlmStub] = {}
        self._channels: list[grpc.aio.Channel] = []
        self.set_members({t: t for t in targets})

    def set_members(self, members: dict[str, str]) -> None:
        """Replica name -> address. The ring hashes names (stable pod names in
        a cluster), so a replica that restarts with a new address keeps its
        sessions. An empty set keeps the last known one (an API outage must
        not leave the orchestrator with no llm at all)."""
        if not members:
            log.warning("llm membership is empty; keeping the last known replicas")
            return
        self.members = dict(members)
        self.targets = list(self.members.values())
        self.ring = Ring(list(self.members))

    def _stub(self, target: str) -> llm_pb2_grpc.LlmStub:
        stub = self._stubs.get(target)
        if stub is None:
            ch = channel(target)
            self._channels.append(ch)
            stub = self._stubs[target] = llm_pb2_grpc.LlmStub(ch)
        return stub

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()

    async def generate(
        self,
        session_id: str,
        messages: list[dict],
        *,
        max_tokens: int = 80,
        temperature: float = 0.0,
        grammar: str = "",
        stop: tuple[str, ...] = (),
        request_id: str = "",
        seed: int = 0,
        assistant_prefix: str = "",
    ) -> AsyncIterator[str]:
        """Yield generated text pieces. Closing the iterator (or cancelling the
        task that consumes it) cancels the call, which stops the engine.

        `assistant_prefix`: continue that assistant reply (already said) and
        yield only what follows it; PrefixUnsupported when the replica cannot."""
        req = llm_pb2.GenerateRequest(
            session_id=session_id,
            request_id=request_id,
            messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
            max_tokens=max_tokens,
            temperature=temperature,
            grammar=grammar,
            stop=list(stop),
            # A fixed seed makes a sampled reply reproducible: a replica that
            # takes a session over mid-reply regenerates the same text.
            seed=seed,
            assistant_prefix=assistant_prefix,
        )
        last_error: Exception | None = None
        for name in self.ring.owners(session_id, len(self.members)):
            target = self.members[name]
            call = self._stub(target).Generate(req)
            started = False
            try:
                async for chunk in call:
                    if assistant_prefix and not chunk.continued:
                        # An llm that predates assistant_prefix ignored it: this
                        # text is a new reply, which would repeat what was said.
                        raise PrefixUnsupported(f"llm {target} does not continue an assistant prefix")
                    started = True
                    if chunk.text:
                        yield chunk.text
                    if chunk.done:
                        return
                return
            except grpc.aio.AioRpcError as exc:
                # Once text has been yielded a retry would duplicate it.
                if started or exc.code() not in _RETRYABLE:
                    raise LlmError(f"llm {target}: {exc.code().name}: {exc.details()}") from exc
                log.warning("llm replica failed, trying the next", extra={"target": target, "code": exc.code().name})
                last_error = exc
            finally:
                call.cancel()
        raise LlmError(f"no llm replica answered: {last_error}")

    async def complete(self, session_id: str, messages: list[dict], **kw) -> str:
        parts = [p async for p in self.generate(session_id, messages, **kw)]
        return "".join(parts)
