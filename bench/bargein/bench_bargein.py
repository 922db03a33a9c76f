"""Barge-in benchmark: N calls in which the caller talks over the agent's reply.

Prints p50/p95 of bargein_stop_ms measured at the client (onset of the
barge-in speech -> agent audio silent at the client) and the word error of the
cut: the interrupted assistant message stored in history against what the
client actually recorded of the agent, transcribed by the stack's own stt.

    python bench/bargein/bench_bargein.py --runs 20
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import tempfile

import numpy as np

from voxmesh.testing.speech import say_to_wav, word_error_rate
from voxmesh_cli.call import call


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def transcribe_pcm(stt_port: int, pcm16: np.ndarray) -> str:
    import grpc

    from voxmesh.v1 import stt_pb2, stt_pb2_grpc

    pcm16 = np.concatenate([pcm16, np.zeros(16000, np.int16)])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stt_port}") as ch:
        async def reqs():
            yield stt_pb2.TranscribeRequest(config=stt_pb2.TranscribeConfig(session_id="bench", sample_rate=16000))
            for i in range(0, pcm16.size, 3200):
                yield stt_pb2.TranscribeRequest(audio=pcm16[i : i + 3200].tobytes())
        return " ".join([e.final.text async for e in stt_pb2_grpc.SttStub(ch).Transcribe(reqs()) if e.WhichOneof("event") == "final"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--after-ms", type=int, default=900)
    args = ap.parse_args()
    import soxr

    from voxmesh_cli.stack import Stack

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-bargein-"))
    stack = Stack(work / "stack")
    stack.start()
    try:
        q = say_to_wav("Can you tell me what you can do for me today?", work / "q.wav", lead_silence=1.0, tail_silence=0.3)
        stop = say_to_wav("No wait, stop. I have another question.", work / "stop.wav", tail_silence=0.3)
        asyncio.run(call(str(q), url=stack.edge_url))  # warm-up
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
        from metrics_util import mean_delta, scrape

        before = scrape(stack.metrics_urls)
        stops, wers = [], []
        n_resumed = 0
        for i in range(args.runs):
            out = work / f"reply{i}.wav"
            r = asyncio.run(call(str(q), url=stack.edge_url, out=str(out), barge_in=str(stop), barge_in_after_ms=args.after_ms, timeout=90))
            cut = [m for m in (r["history"] or []) if m["role"] == "assistant" and m.get("interrupted")]
            # A Resume before the Interrupt (no words from stt within the
            # orchestrator's false_interruption_timeout_ms) means the agent
            # played on after the first stop: the history then rightly holds more
            # than the recording up to that stop, and the cut's word error below
            # says so.
            resumed = any(e["type"] == "resumed" for e in r["events"])
            n_resumed += resumed
            line = f"run {i + 1}: bargein_stop_ms={r['bargein_stop_ms']} interrupted={bool(r['interrupted'])} resumed_first={resumed}"
            if r["bargein_stop_ms"] is not None:
                stops.append(r["bargein_stop_ms"])
            if cut:
                # What the client heard of the agent before the barge-in onset.
                from voxmesh.testing.speech import read_pcm16

                pcm, rate = read_pcm16(out)
                heard_pcm = soxr.resample(pcm, rate, 16000).astype(np.int16)
                heard_text = asyncio.run(transcribe_pcm(stack.procs["stt"].port, heard_pcm[: int(16000 * (r["agent_audio_until_s"] or 0))]))
                w = word_error_rate(cut[0]["content"], heard_text) if cut[0]["content"] else (0.0 if not heard_text.strip() else 1.0)
                wers.append(w)
                line += f" history={cut[0]['content']!r} client_heard={heard_text!r} wer={w:.2f}"
            print(line, flush=True)
        after = scrape(stack.metrics_urls)
        server = mean_delta(before, after, "voxmesh_bargein_stop_seconds")
        if server is not None:
            print(f"\nat the edge (speech onset -> agent audio stopped, voxmesh_bargein_stop_seconds): mean {server * 1000:.0f} ms")
        llm_stop = mean_delta(before, after, "voxmesh_llm_cancel_seconds")
        if llm_stop is not None:
            print(f"at the llm (cancel -> engine stopped, voxmesh_llm_cancel_seconds): mean {llm_stop * 1000:.0f} ms (target <= 100 ms)")
        if stops:
            print(f"bargein_stop_ms over {len(stops)} runs: p50 {pct(stops, 50):.0f} ms, p95 {pct(stops, 95):.0f} ms (target p95 <= 120 ms)")
        print(f"runs where the orchestrator resumed the agent before interrupting it: {n_resumed} of {args.runs}")
        if wers:
            print(f"word error of the cut (history vs client recording): mean {statistics.mean(wers):.2f}, p95 {pct(wers, 95):.2f}")
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
