"""End to end over real WebRTC: `voxmesh call` asks the default agent about an
order; the reply is audible speech that says the order's real status, and the
conversation is in Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
import redis

from voxmesh.testing.speech import ORDER_QUESTION, read_pcm16, word_error_rate
from voxmesh.v1 import stt_pb2, stt_pb2_grpc

pytestmark = pytest.mark.e2e


def transcribe(stack, wav_path: str) -> str:
    """Run a WAV through the stack's own stt service (16 kHz, real time not needed)."""
    import soxr

    pcm, rate = read_pcm16(wav_path)
    if rate != 16000:
        pcm = soxr.resample(pcm, rate, 16000).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(16000, np.int16)])

    async def run() -> str:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.stack.procs['stt'].port}") as ch:
            async def reqs():
                yield stt_pb2.TranscribeRequest(config=stt_pb2.TranscribeConfig(session_id="check", sample_rate=16000))
                for i in range(0, pcm.size, 3200):
                    yield stt_pb2.TranscribeRequest(audio=pcm[i : i + 3200].tobytes())
            finals = [ev.final.text async for ev in stt_pb2_grpc.SttStub(ch).Transcribe(reqs()) if ev.WhichOneof("event") == "final"]
            return " ".join(finals)

    return asyncio.run(run())


def test_order_question_gets_the_real_status_spoken_back(stack):
    wav = stack.speech(ORDER_QUESTION, "order")
    out = stack.workdir / "reply.wav"
    # through the real CLI entry point, as a user would run it
    proc = subprocess.run(
        [sys.executable, "-m", "voxmesh_cli", "call", str(wav), "--url", stack.edge_url, "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("call result:", result)
    assert {"session_id", "user_transcript", "agent_text", "ttfa_ms", "reply_wav"} <= set(result)
    assert "order" in result["user_transcript"].lower()
    # the real status from the order store, not a canned line
    assert "out for delivery" in result["agent_text"].lower(), result["agent_text"]
    assert result["ttfa_ms"] is not None and 0 < result["ttfa_ms"] < 15000

    pcm, rate = read_pcm16(out)
    assert rate == 48000 and pcm.size > rate  # more than a second of reply
    assert np.sqrt(np.mean(pcm.astype(np.float32) ** 2)) > 300  # audible, not silence

    heard = transcribe(stack, str(out))
    print("agent reply transcribed:", heard, "| WER vs agent text:", round(word_error_rate(result["agent_text"], heard), 2))
    assert heard.strip()
    assert "delivery" in heard.lower() or "order" in heard.lower()

    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    history = [json.loads(m) for m in r.lrange(f"vm:s:{result['session_id']}:history", 0, -1)]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert "out for delivery" in history[1]["content"]
    assert r.ttl(f"vm:s:{result['session_id']}:history") > 0
