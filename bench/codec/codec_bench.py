"""The agent's outgoing Opus encoder: CPU per 20 ms frame and quality, per
complexity, bandwidth, application and packet duration, on real Piper speech.

    python bench/codec/codec_bench.py

What it does: synthesizes a few sentences with the packaged Piper voice (the
tts service's backend, in this process), resamples them to 48 kHz as the edge
does, and encodes them with voxmesh_edge.opus.Encoder as the edge's playout
would (one encoder, frame after frame). Printed per setting: the best of three
runs in microseconds per 20 ms of audio, the bitrate, and the wideband PESQ
(ITU-T P.862.2, `pesq` package) of the decoded audio against the original at
16 kHz: a relative figure for comparing settings (PESQ sees only up to 8 kHz;
Piper's voice itself reaches 11 kHz). One PESQ figure moves by ~0.1 with where
the 20 ms frames fall, so the one printed is the mean over each sentence
encoded from 4 starting offsets (0, 5, 10, 15 ms). Figures only; nothing is
asserted.

This chose the edge's default complexity (docs/capacity.md, "Issue 6 follow-up 3").
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import soxr

from voxmesh_edge import opus

TEXTS = [
    "Your order four two one nine is out for delivery and should arrive before six this evening.",
    "I can help you change the address, cancel an item, or talk to a person about a refund.",
    "Sure, the store on Main Street opens at nine and closes at eight, Monday through Saturday.",
]


async def piper_speech() -> tuple[list[np.ndarray], int]:
    from voxmesh_tts.backends import create_backend
    from voxmesh_tts.settings import TtsSettings

    backend = create_backend(TtsSettings())
    backend.load()
    await backend.start()
    try:
        sentences = []
        for text in TEXTS:
            sentences.append(np.concatenate([np.frombuffer(c.pcm, np.int16) async for c in backend.synthesize(text)]))
    finally:
        await backend.close()
    return sentences, backend.sample_rate


def pesq_wb(ref16: np.ndarray, out16: np.ndarray) -> float | None:
    try:
        from pesq import pesq
    except ImportError:  # `make bench` installs it; a bare venv may not have it
        return None
    n = min(ref16.size, out16.size)
    return float(pesq(16000, ref16[:n].astype(np.float32), out16[:n].astype(np.float32), "wb"))


def encode(x48: np.ndarray, size: int, **settings) -> tuple[list[bytes], float]:
    frames = [np.ascontiguousarray(x48[i : i + size]) for i in range(0, x48.size - size + 1, size)]
    enc = opus.Encoder(48000, **settings)
    t = time.perf_counter()
    packets = [enc.encode(f) for f in frames]
    return packets, time.perf_counter() - t


def run(speech48: list[np.ndarray], complexity: int, bandwidth: str = "fullband",
        application: str = "audio", bitrate: int = 32000, frame_ms: int = 20) -> dict:
    """One encoder setting over the sentences (already at 48 kHz, as the edge's playout has them)."""
    settings = {"bitrate": bitrate, "complexity": complexity, "application": application, "max_bandwidth": bandwidth}
    size = 48 * frame_ms
    whole = np.concatenate(speech48)
    best = min(encode(whole, size, **settings)[1] for _ in range(3))
    audio_s = whole.size // size * frame_ms / 1000
    scores, octets = [], 0
    for s in speech48:
        for shift_ms in (0, 5, 10, 15):
            x = s[48 * shift_ms :]
            packets, _ = encode(x, size, **settings)
            octets += sum(map(len, packets))
            dec = opus.Decoder(16000)
            out = np.concatenate([dec.decode(p) for p in packets])
            scores.append(pesq_wb(soxr.resample(x, 48000, 16000), out))
    coded_s = sum((s.size - 48 * k) // size * frame_ms / 1000 for s in speech48 for k in (0, 5, 10, 15))
    return {"application": application, "complexity": complexity, "bandwidth": bandwidth, "frame_ms": frame_ms,
            "us_per_20ms": round(best / (audio_s * 50) * 1e6, 1), "kbps": round(octets * 8 / coded_s / 1000, 1),
            "pesq_wb": None if None in scores else float(np.mean(scores)),
            "pesq_sd": None if None in scores else float(np.std(scores))}


def main() -> None:
    speech, rate = asyncio.run(piper_speech())
    print(f"Piper speech: {sum(s.size for s in speech) / rate:.1f} s at {rate} Hz; libopus {opus.version()}")
    speech48 = [soxr.resample(s, rate, 48000).astype(np.int16) for s in speech]  # once, for every setting
    rows = [run(speech48, c) for c in (0, 2, 3, 4, 5, 6, 8, 10)]
    rows += [run(speech48, c, frame_ms=40) for c in (4, 6)]
    rows += [run(speech48, c, bandwidth=b) for c in (4, 6) for b in ("superwideband", "wideband")]
    rows += [run(speech48, c, bandwidth="wideband", application="voip", bitrate=24000) for c in (0, 6)]
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("-" if r[c] is None else (f"{r[c]:.3f}" if c.startswith("pesq") else str(r[c])) for c in cols) + " |")


if __name__ == "__main__":
    main()
