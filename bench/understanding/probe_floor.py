"""The end of turn's compute floor on this machine: what one pause's two models
cost alone, with nothing else running.

    python bench/understanding/probe_floor.py [--text "..."] [--repeat 5]

The end of turn waits for the pause decode (Whisper on the turn so far plus
`pause_pad_s` of padding: its text is what the fused policy reads) and for Smart
Turn (8 s of audio). This prints, for one espeak-ng question, the decode's encoder
and greedy search time on one and on two threads, per compute type; the search
time with the stable words forced as a prefix; and Smart Turn's features and
inference on one and two threads. With the two models on the two vCPUs in
parallel the verdict cannot come sooner than the slower of them; the decode alone
on both vCPUs is the floor of what any scheduling can reach.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np

from voxmesh.testing.speech import read_pcm16, say_to_wav
from voxmesh_stt import smart_turn
from voxmesh_stt.asr import WhisperAsr
from voxmesh_stt.settings import DEFAULT_SMART_TURN_PATH, SttSettings


def timed(fn, repeat: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", default="Can you tell me when my order will arrive?")
    ap.add_argument("--prefix", default="Can you tell me when my", help="stable words forced as a prefix")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pcm, _ = read_pcm16(say_to_wav(args.text, pathlib.Path(tmp) / "q.wav", rate=16000))
    audio = pcm.astype(np.float32) / 32768
    pad = SttSettings().pause_pad_s
    print(f"clip {audio.size / 16000:.2f} s, pause_pad_s {pad:g}")
    for compute_type in ("int8", "int8_float32", "float32"):
        for threads in (1, 2):
            asr = WhisperAsr(compute_type=compute_type, cpu_threads=threads, workers=1)
            plan = asr.plan(audio, pad_s=pad)
            encoded, _ = asr.encode(plan)
            enc_ms = timed(lambda: asr.encode(plan), args.repeat)
            search_ms = timed(lambda: asr.finish(plan, encoded, 0.0), args.repeat)
            line = (f"whisper {compute_type:12s} {threads} thread(s): window {plan.window_s:g} s, "
                    f"encoder {enc_ms:.0f} ms, search {search_ms:.0f} ms")
            if compute_type == "int8":
                forced = asr.plan(audio, prefix=args.prefix, pad_s=pad)
                line += f", search with the prefix forced {timed(lambda: asr.finish(forced, encoded, 0.0), args.repeat):.0f} ms"
            print(line, "|", asr.finish(plan, encoded, 0.0).text)
    for threads in (1, 2):
        model = smart_turn.SmartTurn(DEFAULT_SMART_TURN_PATH, threads)
        feats = smart_turn.prepare(audio)
        feat_ms = timed(lambda: smart_turn.prepare(audio), args.repeat)
        run_ms = timed(lambda: model.session.run(None, {"input_features": feats}), args.repeat)
        print(f"smart turn {threads} thread(s): features {feat_ms:.1f} ms, inference {run_ms:.0f} ms, p={model(audio):.3f}")


if __name__ == "__main__":
    main()
