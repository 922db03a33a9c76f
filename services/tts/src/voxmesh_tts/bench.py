"""`python -m voxmesh_tts.bench`: first-chunk latency and real-time factor per
clause of the configured backend on this machine (settings from VOXMESH_TTS_*).

Measures the backend directly (no gRPC), clause by clause, the way the service
runs them: first chunk = clause handed to the backend -> its first chunk exists;
RTF = model seconds / audio seconds.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from voxmesh.core.settings import from_env

from voxmesh_tts.backends import create_backend
from voxmesh_tts.settings import TtsSettings

CLAUSES = [
    "Sure.",
    "Let me check that for you.",
    "I found a table for two at seven tonight,",
    "and another one at half past eight if you prefer a later dinner.",
    "Your booking is confirmed; you will get a text message with the details in a minute.",
    "Is there anything else I can help you with today?",
]


async def main() -> None:
    settings = from_env(TtsSettings, "VOXMESH_TTS")
    backend = create_backend(settings)
    await backend.start()
    rows = []
    for rep in range(2):
        for text in CLAUSES:
            t0 = time.perf_counter()
            first = None
            samples = 0
            synth = 0.0
            async for c in backend.synthesize(text):
                if first is None:
                    first = time.perf_counter() - t0
                samples += c.samples
                synth += c.synth_s
            audio = samples / backend.sample_rate
            if rep:  # the first pass warms caches (espeak, ONNX)
                rows.append((text, first, audio, synth / audio))
    print(f"backend={backend.name} voice={backend.default_voice} rate={backend.sample_rate}")
    print(f"{'chars':>5} {'audio s':>8} {'first ms':>9} {'RTF':>6}  clause")
    for text, first, audio, rtf in rows:
        print(f"{len(text):>5} {audio:>8.2f} {first * 1000:>9.0f} {rtf:>6.3f}  {text}")
    print(f"median first chunk {statistics.median(r[1] for r in rows) * 1000:.0f} ms, "
          f"median RTF {statistics.median(r[3] for r in rows):.3f}")
    await backend.close()


if __name__ == "__main__":
    asyncio.run(main())
