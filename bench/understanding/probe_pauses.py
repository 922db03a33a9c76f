"""What the end-of-turn judgement sees at every pause of the bench's utterances,
with the real models and no streaming: for each pause the Silero VAD finds, the
speculative decode of the turn so far (greedy and beam 2, with their times and the
decoder's probability of the last words) and Smart Turn's probability after 32,
64, 96 and 200 ms of trailing silence, marked "end" for the utterance's last pause
and "inner" for a pause the speaker goes on after.

    python bench/understanding/probe_pauses.py [--extra] [--json out.json]

Used to choose the thresholds of policy.py on data rather than guesses; prints one
line per pause and a summary of the tail probabilities by pause kind.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_understanding import REPO, SR, make_set  # noqa: E402

from voxmesh.testing.speech import word_error_rate  # noqa: E402
from voxmesh_stt import smart_turn, vad  # noqa: E402
from voxmesh_stt.asr import WhisperAsr  # noqa: E402
from voxmesh_stt.policy import judge, text_kind  # noqa: E402


def pauses(probs: np.ndarray, on: float = 0.5, off: float = 0.35, min_windows: int = 2) -> tuple[int, list[int]]:
    """(onset window, [end sample of the last speech window before each pause])."""
    onset, ends, speaking, last = None, [], False, 0
    for i, p in enumerate(probs):
        end = (i + 1) * 512
        if speaking:
            if p >= off:
                last = end
            elif end - last >= min_windows * 512:
                speaking = False
                ends.append(last)
        elif p >= on:
            speaking, last = True, end
            onset = i * 512 if onset is None else onset
    if speaking:
        ends.append(last)
    return onset or 0, ends


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--extra", action="store_true", help="also the extra pause set")
    ap.add_argument("--json", default="")
    ap.add_argument("--beams", default="1,2", help="beam sizes to decode with")
    ap.add_argument("--pads", default="2", help="encoder padding (s) to decode with; the first is judged")
    ap.add_argument("--ends-only", action="store_true", help="only the utterance's last pause")
    ap.add_argument("--no-turn-model", action="store_true")
    args = ap.parse_args()
    beams = [int(b) for b in args.beams.split(",")]
    pads = [float(x) for x in args.pads.split(",")]
    utts = make_set(pathlib.Path(tempfile.mkdtemp(prefix="probe-")), quick=False, extra=args.extra)
    asr = WhisperAsr()
    st = smart_turn.load(str(REPO / ".cache/models/smart-turn-v3.2-cpu.onnx"))
    vad_model = vad.shared_model()
    asr.decode(np.zeros(SR, np.float32))
    rows = []
    wer: dict[str, list[float]] = {f"b{b}p{pd:g}": [] for b in beams for pd in pads}
    secs: dict[str, list[float]] = {k: [] for k in wer}
    for u in utts:
        audio = np.concatenate([u.pcm, np.zeros(SR, np.int16)]).astype(np.float32) / 32768
        probs = vad.VadState(vad_model)(audio)
        onset, ends = pauses(probs)
        start = max(0, onset - int(0.3 * SR))
        for j, end in enumerate(ends):
            is_end = j == len(ends) - 1
            if args.ends_only and not is_end:
                continue
            clip = audio[start : end + 64 * SR // 1000]
            row = {"utt": u.name, "kind": u.kind, "pause": "end" if is_end else "inner", "at_s": round(end / SR, 2)}
            for beam in beams:
                for pad in pads:
                    key = f"b{beam}p{pad:g}"
                    t0 = time.perf_counter()
                    r = asr.decode(clip, beam_size=beam, pad_s=pad)
                    row[key], row[key + "_tail"] = r.text, r.tail
                    secs[key].append(time.perf_counter() - t0)
                    if is_end:
                        wer[key].append(word_error_rate(u.text, r.text))
            first = f"b{beams[0]}p{pads[0]:g}"
            for ms in (32, 64, 96, 200):
                row[f"st{ms}"] = -1.0 if args.no_turn_model else round(st(audio[max(start, end + ms * 16 - 8 * SR) : end + ms * 16]), 3)
            tail_p = row[first + "_tail"][-1][1] if row[first + "_tail"] else 1.0
            row["kind1"] = text_kind(row[first], (4,))
            row["req"] = judge(row["st64"], row[first], min_silence_ms=200, max_silence_ms=2000, threshold=0.5,
                               tail_prob=tail_p, complete_digit_counts=(4,)).required_silence_ms
            rows.append(row)
            tail = " ".join(f"{w}:{p:.2f}" for w, p in row[first + "_tail"])
            others = " | ".join(f"{k} {row[k]!r}" for k in wer if k != first and row[k] != row[first])
            print(f"{u.name:22s} {row['pause']:5s} st32/64/96/200 {row['st32']:.2f}/{row['st64']:.2f}/{row['st96']:.2f}/{row['st200']:.2f}"
                  f" req {row['req']:4d} {row['kind1']:9s} | {row[first]!r} [{tail}]" + (f" | {others}" if others else ""), flush=True)
    print()
    for k in wer:
        print(f"{k}: WER of the end decodes {np.mean(wer[k]):.3f}, decode s mean {np.mean(secs[k]):.3f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
