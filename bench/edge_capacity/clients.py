"""Benchmark callers: N aiortc WebRTC sessions in one process, each playing the
benchmark speech on a loop (with a marker burst every 2 s) and recording what
the agent sends back.

To leave the cores to the edge under test, the microphone audio is Opus-encoded
once, up front, and every caller sends those packets (aiortc's sender packs a
pre-encoded av.Packet without re-encoding). Like a browser, a caller sends the
packet duration the edge's answer asks for (a=ptime: 20 or 40 ms; aiortc's own
sender always sends 20 ms) and, like Chromium, wideband (SILK) when the answer's
Opus fmtp says maxplaybackrate=16000. The received audio is decoded and kept as frame
arrival times and counts (the recording), not written out.

Turn-taking callers (OPTIONS {"talk_s": T, "silent_s": S, "dtx_style": ...},
the bench's --turn-taking): each caller alternates T s of the speech loop with
S s of silence, from a random point of that cycle. In the silence, with
`usedtx=1` in the answer's Opus fmtp (the edge asks for it), it sends Opus DTX:
style "toc", one TOC-only packet (1 byte) when the silence starts, then one
every 400 ms and nothing in between; style "webrtc", what libopus + libwebrtc
send (see webrtc_silence: 200 ms of coded silence, then a TOC-only packet,
then every ~400 ms a coded refresh frame followed by a TOC-only packet). The RTP
timestamps run on (aiortc's sender takes the RTP timestamp from the av.Packet's pts,
and the sequence numbers stay contiguous); without it, an Opus packet of
silence every packet period. The loop's position runs on through the silence
(its markers in a silent stretch are not sent). See TalkSchedule.

Run by edge_capacity_bench.py:
    python clients.py URL N STAGGER_S DURATION_S LOOP.npy OUT.json [OPTIONS_JSON]
"""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
import functools
import json
import random
import sys
import time
from dataclasses import dataclass

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voxmesh_edge.media import FastSender, _sender_supported, accelerate_receiver

RATE = 48000
FRAME = 960
TB = fractions.Fraction(1, RATE)
DTX_EVERY = 20  # frames: WebRTC sends a DTX packet every 400 ms in a silence


def _encoder(wideband: bool):
    """A browser's Opus encoder (mono, voip, 32 kb/s, complexity 9); `wideband`
    when the answer says maxplaybackrate <= 16000, which a browser follows
    (Chromium then sends SILK wideband, as the edge's e2e test saw)."""
    from voxmesh_edge import opus

    return opus.Encoder(RATE, 32000, complexity=9, application="voip",
                        max_bandwidth="wideband" if wideband else "fullband")


def wants_wideband(answer: str) -> bool:
    """Whether the answer's Opus fmtp asks for maxplaybackrate <= 16000."""
    for line in answer.splitlines():
        if line.startswith("a=fmtp:") and "maxplaybackrate=" in line:
            rate = line.split("maxplaybackrate=", 1)[1].split(";", 1)[0].strip()
            if rate.isdigit() and int(rate) <= 16000:
                return True
    return False


def encode_loop(pcm: np.ndarray, frames_per_packet: int = 1, wideband: bool = False) -> list[bytes]:
    """The whole loop as Opus packets of 20 ms x frames_per_packet (mono, voip
    at 32 kb/s, as a browser sends), encoded once (libopus via the edge's own
    binding, which takes any Opus frame size)."""
    enc = _encoder(wideband)
    size = FRAME * frames_per_packet
    # Encode two laps and keep the second, so the first packet follows the last
    # one seamlessly when the loop wraps.
    laps = np.concatenate([pcm, pcm])
    out = [enc.encode(laps[i : i + size]) for i in range(0, laps.size - size + 1, size)]
    return out[-(pcm.size // size):]


def encode_silence(frames_per_packet: int, wideband: bool = False) -> tuple[bytes, bytes]:
    """(a steady-state Opus packet of digital silence, its DTX packet) for the
    encoder settings of encode_loop; the DTX packet is the silence packet's TOC
    byte alone (voxmesh_edge.media.dtx_packet, as the edge's own sender makes it)."""
    from voxmesh_edge.media import dtx_packet

    enc = _encoder(wideband)
    size = FRAME * frames_per_packet
    zeros = np.zeros(size, np.int16)
    silence = b""
    for _ in range(10):  # past the encoder's decay into silence
        silence = enc.encode(zeros)
    dtx = dtx_packet(silence)
    if dtx is None:
        raise RuntimeError(f"no DTX packet for TOC {silence[0]:#x}")
    return silence, dtx


@dataclass(frozen=True)
class TalkSchedule:
    """When a turn-taking caller sends what, in 20 ms frames of its own clock
    (frame n is complete at t0 + n x 20 ms): `talk` frames of speech, then
    `silent` frames of silence, repeated, starting `offset` frames into that
    cycle. All three even, so that 40 ms packets never straddle a boundary.

    In a silence, with `dtx`, `style` "toc": one DTX packet at its first frame,
    then one every `dtx_every` frames (400 ms), nothing in between. `style`
    "webrtc": what libopus and libwebrtc do (webrtc_silence): 200 ms of coded
    silence first, then DTX, where every ~400 ms libopus codes a refresh frame
    (sent, > 2 bytes) and libwebrtc sends a TOC-only packet only when it follows
    a bigger one. Without `dtx`: a silence packet every period. `per`: frames
    per packet (the webrtc style depends on it)."""

    talk: int
    silent: int
    offset: int = 0
    dtx: bool = True
    dtx_every: int = DTX_EVERY
    style: str = "toc"
    per: int = 1

    def __post_init__(self) -> None:
        if self.talk <= 0 or self.silent <= 0 or (self.talk | self.silent | self.offset | self.dtx_every) & 1:
            raise ValueError("talk and silent must be > 0; talk, silent, offset and dtx_every even")
        if self.style not in ("toc", "webrtc"):
            raise ValueError(f"unknown DTX style {self.style!r}")

    def next_packet(self, n: int) -> tuple[int, str]:
        """The first packet whose first frame is at or after frame `n` (n even
        for 40 ms packets): (its first frame, "speech" | "dtx" | "silence")."""
        cycle = self.talk + self.silent
        pos = (self.offset + n) % cycle
        if pos < self.talk:
            return n, "speech"
        if not self.dtx:
            return n, "silence"
        start = n - (pos - self.talk)  # the silence's first frame
        if self.style == "webrtc":
            kinds = webrtc_silence(self.silent, self.per)
            for j in range(-(-(n - start) // self.per), len(kinds)):
                if kinds[j] is not None:
                    return start + j * self.per, kinds[j]
            return start + self.silent, "speech"
        m = start + -(-(n - start) // self.dtx_every) * self.dtx_every
        if m < start + self.silent:
            return m, "dtx"
        return start + self.silent, "speech"


@functools.lru_cache(maxsize=None)
def webrtc_silence(silent_frames: int, per: int) -> tuple[str | None, ...]:
    """Per packet of a silence of `silent_frames` x 20 ms: what a browser sends
    with usedtx=1 ("silence": a coded frame; "dtx": the TOC byte alone; None:
    nothing). libopus (opus_encoder.c, decide_dtx_mode) codes the first 200 ms
    of no activity normally, then returns 1-byte DTX frames up to 600 ms, then
    one coded refresh frame and counts again from 200 ms (a refresh every
    ~400 ms). libwebrtc (opus_interface.cc, WebRtcOpus_Encode) drops a <= 2-byte
    packet unless the packet before it was bigger, so it sends the first DTX
    packet after the hangover and after each refresh, nothing else."""
    ms, quiet, in_dtx, out = 20 * per, 0, False, []
    for _ in range(silent_frames // per):
        quiet += ms
        dtx = 200 < quiet <= 600
        if quiet > 600:
            quiet = 200  # the refresh frame
        out.append(None if dtx and in_dtx else "dtx" if dtx else "silence")
        in_dtx = dtx
    return tuple(out)


class LoopMic(MediaStreamTrack):
    """Pre-encoded packets of the loop, paced in real time. Frame n (20 ms) is
    complete at t0 + n x 20 ms; a packet leaves when its last frame is complete
    (so 40 ms packets add 20 ms to their first frame, as in a browser).
    With a `schedule`, frames in its silences go out as DTX (`dtx` set from
    the answer) or silence packets (`silence`: per packet size, (silence, DTX))."""

    kind = "audio"

    def __init__(self, packets: dict[int, list[bytes]], marker_every: int, phase: int,
                 schedule: TalkSchedule | None = None, silence: dict[int, tuple[bytes, bytes]] | None = None) -> None:
        super().__init__()
        self.packets = packets
        self.per = 1
        self.marker_every = marker_every
        self.phase = phase  # in frames, even
        self.schedule = schedule
        self.silence = silence or {}
        self.t0: float | None = None
        self.n = 0  # frames of the caller's clock gone by (the next packet's pts / 960)
        self.marker_times: list[tuple[int, float]] = []  # (frame n of the marker, when its packet left)
        self.sent = {"speech": 0, "dtx": 0, "silence": 0}  # packets
        self.clock, self.sleep = time.monotonic, asyncio.sleep  # a test's fake clock goes here

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.t0 is None:
            self.t0 = self.clock()
        per = self.per
        kind = "speech"
        if self.schedule is not None:
            # Skipping frames (a DTX gap) skips pts: the RTP timestamps run on.
            self.n, kind = self.schedule.next_packet(self.n)
        wait = self.t0 + (self.n + per - 1) * 0.02 - self.clock()
        if wait > 0:
            await self.sleep(wait)
        frames = len(self.packets[1])
        k = (self.phase + self.n) % frames  # the loop runs on through silences
        sent = self.clock()
        if kind == "speech":
            for j in range(per):
                if (k + j) % self.marker_every == 0:
                    # When the packet with the marker leaves: the receive path is
                    # measured from here (a late caller process must not count against
                    # the edge). A 40 ms packet's first frame has already waited 20 ms.
                    self.marker_times.append((self.n + j, sent))
            payload = self.packets[per][k // per]
        else:
            payload = self.silence[per][1 if kind == "dtx" else 0]
        self.sent[kind] += 1
        p = av.Packet(payload)
        p.pts = self.n * FRAME
        p.time_base = TB
        self.n += per
        return p


class BrowserRtcpSender(RTCRtpSender):
    """aiortc's sender with a browser's audio RTCP cadence: a sender report
    every ~5 s (libwebrtc's audio report interval, randomized 0.5-1.5x), not
    every second. The edge's own sender does the same (FastSender._run_rtcp)."""

    _run_rtcp = FastSender._run_rtcp


class Caller:
    def __init__(self, variants: dict[bool, tuple[dict, dict]], marker_every: int, phase: int,
                 schedule: TalkSchedule | None = None, fast_receive: bool = True) -> None:
        """`variants`: wideband? -> (speech packets, silence packets) by frames per packet."""
        self.pc = RTCPeerConnection()
        self.fast_receive = fast_receive
        self.variants = variants
        packets, silence = variants[False]  # until the answer says which (start)
        self.mic = LoopMic(packets, marker_every, phase, schedule, silence)
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
            # Cheap audibility check on the first samples (no conversion).
            pcm = getattr(frame, "pcm", None)  # the fast receiver's 16 kHz frames
            head = pcm[:64] if pcm is not None else np.frombuffer(frame.planes[0], dtype=np.int16, count=64)
            if head.any():
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
        self.mic.packets, self.mic.silence = self.variants[wants_wideband(body)]
        if self.mic.schedule is not None:
            # Opus DTX only when the answer asks for it (usedtx=1), as a browser does.
            dtx = any(ln.startswith("a=fmtp:") and "usedtx=1" in ln for ln in body.splitlines())
            self.mic.schedule = dataclasses.replace(self.mic.schedule, dtx=dtx, per=self.mic.per)
        if self.fast_receive:
            # The edge's own receive path (16 kHz mono decode in the loop, no
            # decoder thread): 60 callers on the load generator's one core must
            # not fall behind and send in bursts, which the edge would then
            # show as its own lateness. Frames still come through the track.
            # Their reports at a browser's cadence too (the receiver's comes with
            # accelerate_receiver): aiortc's stock 1 s would be 5x the RTCP a
            # browser sends the edge.
            (transceiver,) = self.pc.getTransceivers()
            accelerate_receiver(transceiver.receiver, chunk_ms=20)
            if _sender_supported(transceiver.sender):
                transceiver.sender.__class__ = BrowserRtcpSender
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    async def stats(self) -> dict:
        lost = received = on_wire = 0
        report = await self.pc.getStats()
        for s in report.values():
            if s.type == "inbound-rtp":
                lost += max(0, s.packetsLost)
                received += s.packetsReceived
            elif s.type == "outbound-rtp":
                on_wire += s.packetsSent  # the RTP sender's count: what left, DTX gaps included
        return {"packets_lost": lost, "packets_received": received, "rtp_packets_sent": on_wire}


def schedules(n: int, talk_s: float, silent_s: float, seed: int, style: str = "toc") -> list[TalkSchedule | None]:
    """One turn-taking schedule per caller, each from a random point of its
    cycle (so that sessions are not in lockstep); None each for talk_s <= 0."""
    if talk_s <= 0 or silent_s <= 0:
        return [None] * n
    talk, silent = 2 * max(1, round(talk_s * 25)), 2 * max(1, round(silent_s * 25))  # even frames
    rng = random.Random(seed)
    return [TalkSchedule(talk, silent, 2 * rng.randrange((talk + silent) // 2), style=style) for _ in range(n)]


async def main(url: str, n: int, stagger: float, duration: float, loop_path: str, out: str, options: dict) -> None:
    pcm = np.load(loop_path)
    meta = json.loads(open(loop_path + ".json").read())
    variants = {wb: ({1: encode_loop(pcm, 1, wb), 2: encode_loop(pcm, 2, wb)},
                     {1: encode_silence(1, wb), 2: encode_silence(2, wb)}) for wb in (False, True)}
    marker_every = meta["marker_every_frames"]
    plans = schedules(n, options.get("talk_s", 0.0), options.get("silent_s", 0.0), options.get("seed", 0),
                      options.get("dtx_style", "toc"))
    frames = len(variants[False][0][1])
    callers = [Caller(variants, marker_every, (i * 38) % frames, plans[i], options.get("fast_receive", True))
               for i in range(n)]
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
                "packets_sent": c.mic.sent, "dtx": bool(c.mic.schedule and c.mic.schedule.dtx),
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
    options = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
    asyncio.run(main(url, int(n), float(stagger), float(duration), loop_path, out, options))
