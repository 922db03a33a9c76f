"""Benchmark callers: N aiortc WebRTC sessions in one process, each playing the
benchmark speech on a loop (with a marker burst every 2 s) and recording what
the agent sends back.

To leave the cores to the edge under test, the microphone audio is Opus-encoded
once, up front, and every caller sends those packets (aiortc's sender packs a
pre-encoded av.Packet without re-encoding). Like a browser, a caller sends the
packet duration the edge's answer asks for (a=ptime: 20 or 40 ms; aiortc's own
sender always sends 20 ms). The received audio is decoded and kept as frame
arrival times and counts (the recording), not written out.

Run by edge_capacity_bench.py: python clients.py URL N STAGGER_S DURATION_S LOOP.npy OUT.json
"""

from __future__ import annotations

import asyncio
import fractions
import json
import sys
import time

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

RATE = 48000
FRAME = 960
TB = fractions.Fraction(1, RATE)


def encode_loop(pcm: np.ndarray, frames_per_packet: int = 1) -> list[bytes]:
    """The whole loop as Opus packets of 20 ms x frames_per_packet (mono, voip
    at 32 kb/s, as a browser sends), encoded once (libopus via the edge's own
    binding, which takes any Opus frame size)."""
    from voxmesh_edge import opus

    enc = opus.Encoder(RATE, 32000, complexity=9, application="voip")
    size = FRAME * frames_per_packet
    # Encode two laps and keep the second, so the first packet follows the last
    # one seamlessly when the loop wraps.
    laps = np.concatenate([pcm, pcm])
    out = [enc.encode(laps[i : i + size]) for i in range(0, laps.size - size + 1, size)]
    return out[-(pcm.size // size):]


class LoopMic(MediaStreamTrack):
    """Pre-encoded packets of the loop, paced in real time. Frame n (20 ms) is
    complete at t0 + n x 20 ms; a packet leaves when its last frame is complete
    (so 40 ms packets add 20 ms to their first frame, as in a browser)."""

    kind = "audio"

    def __init__(self, packets: dict[int, list[bytes]], marker_every: int, phase: int) -> None:
        super().__init__()
        self.packets = packets
        self.per = 1
        self.marker_every = marker_every
        self.phase = phase  # in frames, even
        self.t0: float | None = None
        self.n = 0  # frames sent
        self.marker_times: list[float] = []

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.t0 is None:
            self.t0 = time.monotonic()
        per = self.per
        wait = self.t0 + (self.n + per - 1) * 0.02 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frames = len(self.packets[1])
        k = (self.phase + self.n) % frames
        sent = time.monotonic()
        for j in range(per):
            if (k + j) % self.marker_every == 0:
                # When the packet with the marker leaves: the receive path is
                # measured from here (a late caller process must not count against
                # the edge). A 40 ms packet's first frame has already waited 20 ms.
                self.marker_times.append(sent)
        p = av.Packet(self.packets[per][k // per])
        p.pts = self.n * FRAME
        p.time_base = TB
        self.n += per
        return p


class Caller:
    def __init__(self, packets: dict[int, list[bytes]], marker_every: int, phase: int) -> None:
        self.pc = RTCPeerConnection()
        self.mic = LoopMic(packets, marker_every, phase)
        self.pc.addTrack(self.mic)
        self.pc.createDataChannel("events")
        self.arrivals: list[float] = []
        self.samples = 0
        self.audible = 0
        self.sid = ""
        self.task: asyncio.Task | None = None

        @self.pc.on("track")
        def on_track(track) -> None:
            self.task = asyncio.ensure_future(self._record(track))

    async def _record(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.arrivals.append(time.monotonic())
            self.samples += frame.samples
            # Cheap audibility check on the raw plane (no conversion).
            plane = np.frombuffer(frame.planes[0], dtype=np.int16, count=64)
            if plane.any():
                self.audible += 1

    async def start(self, http: aiohttp.ClientSession, url: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(f"{url}/v1/sessions", data=self.pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}) as r:
            body = await r.text()
            if r.status != 201:
                raise RuntimeError(f"edge refused: {r.status} {body}")
            self.sid = r.headers["X-Voxmesh-Session"]
        # Follow the answer's a=ptime as a browser's Opus encoder does.
        self.mic.per = 2 if "a=ptime:40" in body or "a=ptime:60" in body else 1
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    async def stats(self) -> dict:
        lost = received = 0
        report = await self.pc.getStats()
        for s in report.values():
            if s.type == "inbound-rtp":
                lost += max(0, s.packetsLost)
                received += s.packetsReceived
        return {"packets_lost": lost, "packets_received": received}


async def main(url: str, n: int, stagger: float, duration: float, loop_path: str, out: str) -> None:
    pcm = np.load(loop_path)
    meta = json.loads(open(loop_path + ".json").read())
    packets = {1: encode_loop(pcm, 1), 2: encode_loop(pcm, 2)}
    marker_every = meta["marker_every_frames"]
    callers = [Caller(packets, marker_every, (i * 38) % len(packets[1])) for i in range(n)]
    async with aiohttp.ClientSession() as http:
        for c in callers:
            await c.start(http, url)
            await asyncio.sleep(stagger)
        started = time.monotonic()
        print(json.dumps({"ready": started}), flush=True)
        await asyncio.sleep(duration)
        results = []
        for c in callers:
            st = await c.stats()
            results.append({
                "session_id": c.sid, "marker_times": c.mic.marker_times, "frames_sent": c.mic.n,
                "arrivals": c.arrivals, "samples": c.samples, "audible_frames": c.audible, **st,
                "state": c.pc.connectionState,
            })
        with open(out, "w") as f:
            json.dump(results, f)
        for c in callers:
            with_timeout = asyncio.wait_for(http.delete(f"{url}/v1/sessions/{c.sid}"), 5)
            try:
                r = await with_timeout
                r.release()
            except Exception:
                pass
            await c.pc.close()
            if c.task:
                c.task.cancel()


if __name__ == "__main__":
    url, n, stagger, duration, loop_path, out = sys.argv[1:7]
    asyncio.run(main(url, int(n), float(stagger), float(duration), loop_path, out))
