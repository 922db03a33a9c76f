"""How much silence the Whisper encoder needs after the words: word error rate and
decode time of the stt pipeline's decodes for several paddings, without streaming.

    python bench/understanding/probe_padding.py [--configs 8/8,3/3,2/2] [--threads 2]

For each of the understanding bench's utterances it replays what the service does
(asr.py, stream.py): an interim decode every 0.4 s of speech with the stable prefix
forced (padding: the first number of a config), then the final decode of the whole
utterance with the last stable prefix (padding: the second number). A result that
looks like a loop is cut where it repeats (the service's rule). Prints the final
WER and the mean decode times per config.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_understanding import SR, make_set  # noqa: E402

from voxmesh.testing.speech import word_error_rate  # noqa: E402
from voxmesh_stt.asr import WhisperAsr  # noqa: E402
from voxmesh_stt.stream import stable_between  # noqa: E402

INTERIM_EVERY_S = 0.4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="8/8,3/3,2/2", help="interim pad / final pad (s), comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="", help="where the espeak-ng WAVs are kept (default: a temp dir)")
    args = ap.parse_args()
    import tempfile

    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="probe-padding-"))
    workdir.mkdir(parents=True, exist_ok=True)
    utts = make_set(workdir, quick=False, extra=True)
    asr = WhisperAsr(cpu_threads=args.threads)
    for config in args.configs.split(","):
        interim_pad, final_pad = (float(v) for v in config.split("/"))
        wers, finals, interims = [], [], []
        for u in utts:
            audio = u.pcm.astype(np.float32) / 32768
            start, end = int(max(0.0, u.onset_s - 0.3) * SR), int((u.end_s + 0.07) * SR)
            stable, last = "", ""
            cut = int((u.onset_s + INTERIM_EVERY_S) * SR)
            while cut < end - int(0.2 * SR):
                r = asr.decode(audio[start:cut], prefix=stable, pad_s=interim_pad)
                interims.append(r.seconds)
                text = r.text.strip()
                if text and text.startswith(stable):
                    stable, last = stable_between(last, text, stable), text
                cut += int(INTERIM_EVERY_S * SR)
            r = asr.decode(audio[start:end], prefix=stable, pad_s=final_pad)
            finals.append(r.seconds)
            wers.append(word_error_rate(u.text, r.text))
        print(f"interim pad {interim_pad:g} s, final pad {final_pad:g} s: WER {np.mean(wers):.3f}, "
              f"final decode mean {np.mean(finals):.3f} s, interim decode mean {np.mean(interims):.3f} s "
              f"({len(utts)} utterances)", flush=True)


if __name__ == "__main__":
    main()
