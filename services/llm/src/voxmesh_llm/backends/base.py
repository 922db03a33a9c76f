"""The interface every llm backend implements.

`generate(params)` returns an async iterator of `Piece`s: text as it is decoded, the
last piece carrying `finish_reason` ("stop" | "length" | "cancelled"). Backends
record the engine-side metrics themselves (voxmesh_llm_ttft_seconds,
voxmesh_llm_queue_depth, voxmesh_llm_active_requests, voxmesh_llm_tokens_total,
voxmesh_llm_cancel_seconds) because only they see the queue and the decode loop.

Cancellation contract: when the consumer stops iterating (aclose(), or its task is
cancelled while it waits for the next piece) the backend stops generating for that
request within one decode step (on llama.cpp: one token or one prompt slice), frees
the engine for the next request, and observes voxmesh_llm_cancel_seconds (consumer
gone -> engine stopped). A request cancelled while still queued never starts.

Continuation: `params.assistant_prefix` (non-empty) is the start of the assistant's
reply, already said. The backend renders the chat template with the assistant turn
open (the generation prompt), appends the prefix as plain text (never control
tokens, no end-of-turn after it) and generates what follows; the pieces carry only
the new text. On llama.cpp the rendered prompt plus prefix shares its head with the
KV state the interrupted request left, so only the part that differs is evaluated.
A vLLM backend does the same with `continue_final_message=True` (the prefix as the
last, open assistant message) and `add_generation_prompt=False`. A grammar applies
to the continuation only.

Errors the caller caused (a grammar that does not compile, a prompt longer than the
context) raise InvalidRequest; a full queue raises Overloaded. Both are raised from
the iterator before any piece is yielded.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str
    name: str = ""


@dataclass(frozen=True)
class GenerateParams:
    messages: tuple[Message, ...]
    max_tokens: int  # > 0 (the server applies its default for 0)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    grammar: str = ""  # GBNF
    json_schema: str = ""  # JSON schema text (compiled to a grammar on llama.cpp)
    seed: int | None = None  # None = random
    assistant_prefix: str = ""  # "" = a new reply; else continue this assistant text
    session_id: str = ""  # cache affinity and logs only
    request_id: str = ""
    received_at: float = field(default=0.0, compare=False)  # time.perf_counter() at arrival, for TTFT


@dataclass(frozen=True)
class Piece:
    text: str
    finish_reason: str = ""  # set on the last piece only
    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated so far


class InvalidRequest(ValueError):
    """The request cannot be served as asked (maps to INVALID_ARGUMENT)."""


class Overloaded(RuntimeError):
    """Too many requests waiting (maps to RESOURCE_EXHAUSTED)."""


class LlmBackend(abc.ABC):
    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model once per process; returns when it can serve."""

    @abc.abstractmethod
    def generate(self, params: GenerateParams) -> AsyncIterator[Piece]:
        """Stream one reply (see the module contract)."""

    async def close(self) -> None:
        """Stop the engine (running requests finish with "cancelled") and free the model."""
