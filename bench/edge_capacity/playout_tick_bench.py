"""CPU of the edge's playout side alone, per session: N PacedOpusTracks on one
event loop, wired as a session wires them (Playout, EchoGuard as its output
listener), each pulled by a task as FastSender pulls it, but nothing sent.

    python bench/edge_capacity/playout_tick_bench.py --sessions 200 --seconds 10 --mode idle

--mode idle: the agent is silent (a DTX gap: a keep-alive every 400 ms);
--mode speaking: each track plays a long tone (an encode per 20 ms).
Prints process CPU ms per session-second over the window (after 1 s of
warm-up), packets pulled, and how many of the tracks' ticks were late.
With many tracks this measures the per-tick cost that the full benchmark
(edge_capacity_bench.py) cannot resolve within its run-to-run noise. Figures
only; nothing is asserted. Run it with PYTHONPATH pointing at a snapshot of
services/media-edge/src to compare commits."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

from voxmesh_edge.echo import EchoGuard
from voxmesh_edge.media import PacedOpusTrack
from voxmesh_edge.playout import Playout, Segment


async def run(n: int, seconds: float, mode: str) -> dict:
    tracks, counts = [], [0] * n
    for _ in range(n):
        playout = Playout(lambda *a: None, lambda t: None)
        echo = EchoGuard()
        playout.on_output = echo.played
        track = PacedOpusTrack(playout, dtx=True)
        if hasattr(playout, "on_silence"):  # what the session wires (where the code has it)
            playout.on_silence = echo.silence
            echo.sync = track.catch_up
        assert track.use_opus()
        if mode == "speaking":
            t = np.arange(48000 * int(seconds + 5))
            playout.enqueue(Segment("a1", 0, (6000 * np.sin(2 * np.pi * 300 * t / 48000)).astype(np.int16), (0, 1), [], "x", True))
        tracks.append(track)

    async def pull(i: int, track: PacedOpusTrack) -> None:
        while True:
            await track.next_payload()
            counts[i] += 1

    tasks = [asyncio.ensure_future(pull(i, t)) for i, t in enumerate(tracks)]
    await asyncio.sleep(1.0)  # warm-up: the first packets, the encoders' decay into DTX
    c0, p0, w0 = time.process_time(), sum(counts), time.monotonic()
    await asyncio.sleep(seconds)
    c1, p1, w1 = time.process_time(), sum(counts), time.monotonic()
    for t in tasks:
        t.cancel()
    for t in tracks:
        t.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    wall = w1 - w0
    return {"sessions": n, "mode": mode, "cpu_cores": round((c1 - c0) / wall, 3),
            "cpu_ms_per_session_s": round(1000 * (c1 - c0) / wall / n, 3), "packets_per_session_s": round((p1 - p0) / wall / n, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mode", choices=("idle", "speaking"), default="idle")
    args = ap.parse_args()
    try:
        import uvloop  # the edge's loop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.sessions, args.seconds, args.mode))), flush=True)


if __name__ == "__main__":
    main()
