"""`python -m voxmesh_llm.bench`: time to first token and decode speed of the
configured backend on this machine (settings from VOXMESH_LLM_*).

For a ~300-token prompt: TTFT cold (nothing cached), TTFT for the next turn of the
same conversation (prefix reused), and tokens/s while decoding. Measures the backend
directly (no gRPC).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from voxmesh.core.settings import from_env

from voxmesh_llm.backends import create_backend
from voxmesh_llm.backends.base import GenerateParams, Message
from voxmesh_llm.settings import LlmSettings


def system_prompt() -> str:
    rules = " ".join(f"Rule {i}: confirm the guest count, date and time politely." for i in range(18))
    return f"Session {uuid.uuid4().hex[:8]}. You are a friendly restaurant booking assistant. {rules}"


async def run(backend, messages, max_tokens=96) -> tuple[float, float, int, int, str]:
    params = GenerateParams(messages=tuple(messages), max_tokens=max_tokens, received_at=time.perf_counter())
    t0 = time.perf_counter()
    first = t_first = None
    text, last = [], None
    async for piece in backend.generate(params):
        if first is None:
            t_first = time.perf_counter()
            first = t_first - t0
        text.append(piece.text)
        last = piece
    n = last.completion_tokens
    rate = (n - 1) / (time.perf_counter() - t_first) if n > 1 else 0.0
    return first, rate, last.prompt_tokens, n, "".join(text)


async def main() -> None:
    settings = from_env(LlmSettings, "VOXMESH_LLM")
    backend = create_backend(settings)
    await backend.start()
    for _ in range(2):
        history = [Message("system", system_prompt()),
                   Message("user", "Hi! Please tell me a long story about a restaurant in Paris.")]
        cold, rate1, n_prompt, n1, reply = await run(backend, history)
        history += [Message("assistant", reply), Message("user", "Nice. And what happened next?")]
        warm, rate2, n_prompt2, n2, _ = await run(backend, history)
        print(f"prompt {n_prompt} tokens: TTFT cold {cold * 1000:.0f} ms, decode {rate1:.0f} tok/s ({n1} tokens) | "
              f"next turn {n_prompt2} tokens: TTFT {warm * 1000:.0f} ms, decode {rate2:.0f} tok/s ({n2} tokens)")
    await backend.close()


if __name__ == "__main__":
    asyncio.run(main())
