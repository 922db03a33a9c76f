"""The edge's media fast path: every per-frame step on the event loop, none
handed to a thread, and one clock for all of a process's playout.

Stock aiortc moves every audio frame across threads twice: a decoder thread
per receiver (a queue.Queue put, then run_coroutine_threadsafe back to the
loop) and the default executor for every encode (run_in_executor, then
call_soon_threadsafe back). Each handoff wakes a thread and bounces the GIL,
which cost more than the codec work itself (docs/capacity.md, "Edge capacity").
Here, per session:

- Inbound: `FastReceiver` replaces the audio receiver's jitter buffer and
  decoder thread. Packets are decoded inline by libopus straight to 16 kHz mono
  (the rate stt wants: no channel mixing, no 48 -> 16 kHz resampling), and
  `ReorderBuffer` hands a packet on the moment it is the next in sequence.
  aiortc's audio jitter buffer holds 4 frames back (prefetch=4, ~80 ms) to
  smooth PLAYOUT; the edge does not play the caller's audio, it feeds a
  recognizer that needs complete, ordered audio, not evenly spaced audio. So
  the only wait left is for a missing packet, at most `reorder_frames` frames;
  then the gap is concealed (libopus PLC), keeping the audio clock exact.
  And an SRTP packet is handled in the socket's own callback (`DirectRtp`):
  stock aiortc queues every datagram for the DTLS transport's task, which
  wakes per packet and walks five coroutines to reach the receiver.
- Outbound: `PacedOpusTrack` hands the sender Opus packets it encoded inline
  (aiortc packs a pre-encoded av.Packet without its executor): mono at a voice
  bitrate rather than aiortc's stereo 96 kb/s, and silence (the agent is quiet
  most of the time) is a cached 3-byte packet once the encoder has settled on
  it, not an encode per tick.
- Pacing: the tracks wait on a `Ticker` per event loop, a 20 ms grid with
  one timer per tick for the whole process instead of one sleep per session
  per frame (in 4 lanes offset by 5 ms, so that the sessions' packets do not
  all go out in one burst), so N sessions cost 4 loop wake-ups per tick, not N; a session
  in a DTX gap (the agent silent) does not wake at all between keep-alives.
  Lateness is measured for every packet sent against its grid time.

`accelerate(transceiver, track, settings)` switches one session's audio
transceiver to this path after the offer is applied (before the transport
starts); anything it does not recognise (another codec, an aiortc whose
internals moved, no libopus) keeps stock aiortc behaviour for that session.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import fractions
import functools
import logging
import math
import random
import struct
import time
import weakref
from collections.abc import Callable
from typing import Self

import av
import numpy as np
import pylibsrtp
from aiortc import clock
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtp import (RtcpByePacket, RtcpReceiverInfo, RtcpRrPacket, RtcpSdesPacket, RtcpSenderInfo,
                        RtcpSourceInfo, RtcpSrPacket, RtpPacket)
from aiortc.rtcrtpsender import RTCRtpSender, random_sequence_number
from aiortc.utils import random32, uint16_add, uint16_gt

from voxmesh.core.metrics import metric
from voxmesh_edge import opus
from voxmesh_edge.audio import SILENCE, STT_RATE, WEBRTC_FRAME_SAMPLES, WEBRTC_RATE, nonzero
from voxmesh_edge.playout import Playout

log = logging.getLogger(__name__)

FRAME_S = 0.020
_P = "_RTCRtpReceiver__"  # aiortc's name-mangled receiver internals
_RECEIVER_ATTRS = ("codecs", "rtx_ssrc", "transport", "started", "kind", "jitter_buffer", "decoder_queue",
                   "decoder_thread", "rtcp_task", "timestamp_mapper", "active_ssrc", "remote_streams",
                   "rtcp_started", "rtcp_exited", "lsr", "lsr_time", "rtcp_ssrc")
_D = "_RTCDtlsTransport__"  # aiortc's name-mangled DTLS transport internals
_RX_BYTES, _RX_PACKETS = _D + "rx_bytes", _D + "rx_packets"  # its receive counters (DirectRtp, per packet)


# -- packetization ------------------------------------------------------------


def request_ptime(sdp: str, ptime_ms: int) -> str:
    """Ask the caller to send `ptime_ms` of audio per packet: `a=ptime` in our
    answer's audio section (RFC 4566; browsers' Opus encoders follow the remote
    description's ptime). 40 ms packets halve the inbound packet rate, and with
    it the per-packet cost (socket read, SRTP, RTP parsing, a decode call),
    for the same delay the edge's 40 ms inbound chunks already add. Clients
    that ignore it keep sending 20 ms packets, which works just as well."""
    if ptime_ms <= 0 or "a=ptime:" in sdp:
        return sdp
    out, in_audio = [], False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            if in_audio:
                out.append(f"a=ptime:{ptime_ms}")
            in_audio = line.startswith("m=audio")
        out.append(line)
    if in_audio:
        # the audio section is last: insert before the trailing empty line
        out.insert(len(out) - 1 if out and out[-1] == "" else len(out), f"a=ptime:{ptime_ms}")
    return "\r\n".join(out)


def request_opus_fmtp(sdp: str, **params: int) -> str:
    """Add `params` to the Opus `a=fmtp` lines of our answer (RFC 7587 section
    6.1: the receiver's preferences; browsers' Opus encoders follow them), each
    unless the line already has it. What the edge asks for:

    - `usedtx=1`: a caller whose user is silent sends one packet per 400 ms
      instead of one per 40 ms, which is most of a call's inbound packets (the
      user listens while the agent talks). Only with the fast receiver: it
      fills the RTP timestamp gaps of a DTX stream with silence (InlineDecoder),
      so stt's audio clock, and the pause that ends a turn, stay exact; a
      receive path that releases audio per packet would compress them.
    - `maxplaybackrate=16000`: the caller's audio only ever reaches stt, at 16
      kHz; told so, a browser's encoder stays in wideband (SILK) instead of
      fullband hybrid, which the edge decodes in ~55 % of the time (52 vs 92 us
      per 40 ms packet here) for the same 16 kHz result, and sends no bits for
      bands nobody hears."""
    lines = sdp.split("\r\n")
    opus_pts = {ln.split()[0].split(":", 1)[1] for ln in lines
                if ln.startswith("a=rtpmap:") and " " in ln and ln.split()[1].lower().startswith("opus/")}
    wanted = ";".join(f"{k}={v}" for k, v in params.items())

    def extend(line: str) -> str:
        have = {kv.split("=", 1)[0].strip() for kv in line.split(" ", 1)[1].split(";")} if " " in line else set()
        add = ";".join(f"{k}={v}" for k, v in params.items() if k not in have)
        if not add:
            return line
        return f"{line};{add}" if " " in line else f"{line} {add}"

    out, fmtp_done = [], set()
    for line in lines:
        if line.startswith("a=fmtp:") and line[7:].split(" ", 1)[0] in opus_pts:
            fmtp_done.add(line[7:].split(" ", 1)[0])
            line = extend(line)
        out.append(line)
    for pt in opus_pts - fmtp_done:  # no fmtp line yet: one after the rtpmap
        i = next(i for i, ln in enumerate(out) if ln.startswith(f"a=rtpmap:{pt} "))
        out.insert(i + 1, f"a=fmtp:{pt} {wanted}")
    return "\r\n".join(out)


def dtx_packet(silence: bytes) -> bytes | None:
    """The Opus DTX packet for an encoder whose silence packet is `silence`:
    its TOC byte (same mode, bandwidth and frame size) with frames of length 0
    (code 0: one frame; code 1: two equal frames, both empty). WebRTC receivers
    take a payload of <= 2 bytes as DTX (comfort noise, not loss); libopus
    decodes it as concealment of the previous (silent) audio. None for a code 2
    or 3 TOC, which needs more bytes."""
    if not silence or silence[0] & 0x3 > 1:
        return None
    return silence[:1]


# -- pacing -------------------------------------------------------------------


class PlayoutStats:
    """The playout metrics of every fast track of the process, counted here
    and published once per tick (Ticker._fire) and when a track stops, instead
    of a prometheus `observe` and two `inc` calls (each a Python call that
    takes a lock, and in multiprocess mode writes a shared file) per frame per
    session. Same metrics, same buckets: the histogram's bucket counts and
    sum are added in one step per tick. Event-loop thread only (the edge runs
    one loop per process), so no lock of its own."""

    _instance: PlayoutStats | None = None

    def __init__(self) -> None:
        self._hist = metric("voxmesh_frame_lateness_seconds")
        self._late_metric = metric("voxmesh_playout_late_frames_total")
        frames = metric("voxmesh_playout_frames_total")
        self._audio_metric, self._silence_metric = frames.labels(kind="audio"), frames.labels(kind="silence")
        # prometheus_client keeps one (non-cumulative) value per bucket and
        # the sum; an unknown layout gets an observe() per frame as before.
        bounds = getattr(self._hist, "_upper_bounds", None)
        self._direct = not (bounds and len(getattr(self._hist, "_buckets", ())) == len(bounds)
                            and hasattr(self._hist, "_sum"))
        self._bounds = list(bounds or ())
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self.late = self.audio = self.silence = 0
        self._pending = False

    @classmethod
    def get(cls) -> PlayoutStats:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def sent(self, late: float) -> None:
        """A packet went out `late` seconds after its grid time."""
        late = max(0.0, late)
        if self._direct:
            self._hist.observe(late)
        else:
            # Prometheus buckets are `value <= le`: the first bound >= late.
            self._counts[bisect.bisect_left(self._bounds, late)] += 1
            self._sum += late
        if late > FRAME_S:
            self.late += 1
        self._pending = True

    def frames(self, audible: bool, n: int) -> None:
        if audible:
            self.audio += n
        else:
            self.silence += n
        self._pending = True

    def publish(self) -> None:
        if not self._pending:
            return
        self._pending = False
        if self._sum or any(self._counts):
            buckets = self._hist._buckets
            for i, c in enumerate(self._counts):
                if c:
                    buckets[i].inc(c)
                    self._counts[i] = 0
            self._hist._sum.inc(self._sum)
            self._sum = 0.0
        if self.late:
            self._late_metric.inc(self.late)
        if self.audio:
            self._audio_metric.inc(self.audio)
        if self.silence:
            self._silence_metric.inc(self.silence)
        self.late = self.audio = self.silence = 0


class _PerLoop:
    """One instance per event loop, made on first use by `of(loop)` (default: the
    running loop) as `cls(loop)`: the process's shared timers live on its loop."""

    _by_loop: weakref.WeakKeyDictionary

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._by_loop = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop | None = None) -> Self:
        loop = loop or asyncio.get_running_loop()
        instance = cls._by_loop.get(loop)
        if instance is None:
            instance = cls._by_loop[loop] = cls(loop)
        return instance


class Ticker(_PerLoop):
    """A 20 ms grid shared by the playout tracks of one event loop: tick k is
    due at t0 + k x 20 ms. One timer per tick wakes all the tracks waiting for
    it (each with its own future, so one track's cancellation touches no other).

    `Ticker.lane()` hands each new track one of LANES grids offset from this
    one by 20 / LANES ms, in turn: all tracks on one grid wake together and
    their packets' work (encode, SRTP, send) then runs back to back, a burst
    of several ms per tick at ~60 sessions per core, which the callers'
    packets arriving meanwhile wait behind. Spread over 4 lanes each burst is
    a quarter as long (measured at 60 sessions: the receive path's p50 delay
    7.6-8.2 -> 4.6-5.3 ms, late packets about the same); a track's packets
    are as regular as before (its own grid), and the process has 4 timers per
    20 ms instead of one."""

    LANES = 4

    def __init__(self, loop: asyncio.AbstractEventLoop, t0: float | None = None) -> None:
        self._loop = loop
        self.t0 = time.monotonic() if t0 is None else t0
        self._waiters: dict[int, list[asyncio.Future]] = {}
        self._lanes: list[Ticker] | None = None
        self._turn = 0

    @classmethod
    def lane(cls, loop: asyncio.AbstractEventLoop | None = None) -> Ticker:
        """The grid for a new track: the loop's LANES grids in turn."""
        base = cls.of(loop)
        if base._lanes is None:
            base._lanes = [base] + [cls(base._loop, base.t0 + i * FRAME_S / cls.LANES) for i in range(1, cls.LANES)]
        base._turn = (base._turn + 1) % len(base._lanes)
        return base._lanes[base._turn]

    def due(self, k: int) -> float:
        return self.t0 + k * FRAME_S

    def next_tick(self) -> int:
        """The first tick not yet due."""
        return int((time.monotonic() - self.t0) / FRAME_S) + 1

    async def wait(self, k: int) -> None:
        delay = self.due(k) - time.monotonic()
        if delay <= 0:
            return
        fut = self._loop.create_future()
        self._add(k, fut, delay)
        await fut

    def arm(self, k: int, fut: asyncio.Future) -> None:
        """Resolve `fut` at tick k (at once if it is due), unless something
        else resolves it first (a sleeping track's wake-up)."""
        delay = self.due(k) - time.monotonic()
        if delay <= 0:
            if not fut.done():
                fut.set_result(None)
            return
        self._add(k, fut, delay)

    def _add(self, k: int, fut: asyncio.Future, delay: float) -> None:
        waiters = self._waiters.get(k)
        if waiters is None:
            waiters = self._waiters[k] = []
            self._loop.call_later(delay, self._fire, k)
        waiters.append(fut)

    def _fire(self, k: int) -> None:
        # the playout metrics counted since the previous tick, in one batch
        PlayoutStats.get().publish()
        for fut in self._waiters.pop(k, ()):
            if not fut.done():
                fut.set_result(None)


class PacedOpusTrack(MediaStreamTrack):
    """The agent's outgoing audio: 20 ms frames on a grid from the Playout
    queue, one or more per packet (`ptime_ms`), as Opus packets encoded here
    (or as PCM frames for aiortc to encode when the call did not negotiate
    Opus). Same metrics as PlayoutTrack, with lateness observed for every
    packet sent."""

    kind = "audio"
    SILENCE_SETTLE = 5  # zero frames the encoder sees before the cached packet takes over

    def __init__(self, playout: Playout, bitrate: int = 32000, complexity: int = 6, application: str = "audio",
                 ptime_ms: int = 20, dtx: bool = False, dtx_interval_ms: int = 400) -> None:
        super().__init__()
        self.playout = playout
        self.bitrate, self.complexity, self.application = bitrate, complexity, application
        # Agent audio goes out in packets of up to ptime_ms (a multiple of 20 ms,
        # at most 60; only when encoding here): a packet leaves when its FIRST
        # frame is due, carrying the frames after it that the playout already
        # holds (tts runs ahead of real time), so bigger packets add no delay
        # to agent audio and none to the first audio of a reply. What they cost:
        # a barge-in's pause cannot recall the (up to ptime_ms - 20 ms of) audio
        # already sent ahead. What they save: per-packet work (a wake-up, RTP,
        # SRTP, a sendto) for every 20 ms beyond the first. Silence and DTX go
        # in 20 ms frames.
        self.max_frames = max(1, min(3, ptime_ms // 20))
        self._frames_sent = 1  # frames in the last packet (its period, in ticks)
        # Discontinuous transmission while the agent is silent (see recv): one
        # DTX packet, then one every dtx_interval_ms, nothing in between.
        self.dtx = dtx
        self.dtx_interval_ms = dtx_interval_ms
        self._encoder: opus.Encoder | None = None
        self._silence: bytes | None = None
        self._dtx_packet: bytes | None = None
        self._zeros = 0
        self.talkspurt_start = True  # the packet just returned opens a talkspurt (RTP marker bit)
        self._in_dtx = True          # in a DTX gap (or before the first packet)
        self._tick: int | None = None  # first tick of the last packet period handled
        self._ticker: Ticker | None = None
        self._n = 0
        # Sleeping through a DTX gap (see _sleep): the packet periods still to
        # account as silence, and the future that ends the sleep.
        self._skip_left = 0
        self._wake: asyncio.Future | None = None
        self._tb = fractions.Fraction(1, WEBRTC_RATE)
        self._stats = PlayoutStats.get()

    @property
    def encodes_opus(self) -> bool:
        return self._encoder is not None

    def use_opus(self) -> bool:
        """Encode here (the call negotiated Opus). False if libopus is missing."""
        if not opus.available():
            return False
        self._encoder = opus.Encoder(WEBRTC_RATE, self.bitrate, self.complexity, application=self.application)
        # The packet our encoder settles on for digital silence, made once with
        # the same settings (a few bytes: the decoder outputs silence from it).
        probe = opus.Encoder(WEBRTC_RATE, self.bitrate, self.complexity, application=self.application)
        zeros = np.zeros(WEBRTC_FRAME_SAMPLES, np.int16)
        for _ in range(self.SILENCE_SETTLE * 2):
            self._silence = probe.encode(zeros)
        self._dtx_packet = dtx_packet(self._silence)
        return True

    async def recv(self):
        """The next packet (or, without Opus, PCM frame) to send, when it is due.

        DTX (`dtx`, Opus only): once the agent has been silent for
        SILENCE_SETTLE packets (the encoder's decay has gone out), the silence
        is sent as an Opus DTX packet (RFC 6716 3.2.1: the TOC byte alone, a
        frame of length 0, which decoders conceal, i.e. play as silence or
        comfort noise), then nothing until dtx_interval_ms later, when another
        one keeps the stream alive (WebRTC's Opus DTX does the same, every 400
        ms). recv() just does not return for the ticks in between, and while
        the playout is idle the track does not even wake for them (it sleeps
        until the keep-alive or new audio, see _sleep): the playout and the
        echo guard are advanced over the skipped ticks in one step, and the
        next packet's pts, hence its RTP timestamp, counts them, while aiortc
        numbers packets contiguously (no loss seen). The
        first packet after a gap (speech again) opens a talkspurt:
        `talkspurt_start` is True when it is returned (FastSender sets the RTP
        marker bit from it, RFC 3551 4.1)."""
        out = await self.next_payload()
        return self._packet(*out) if type(out) is tuple else out

    async def next_payload(self):
        """What recv() returns, without the av.Packet (FastSender's per-packet
        path): (Opus payload, RTP timestamp offset at 48 kHz), or the PCM frame
        when not encoding here."""
        while True:
            out = await self._next()
            if out is not None:
                return out

    async def _next(self):
        """One packet period: wait for it, take its audio from the playout, and
        return what to send: (Opus payload, pts), a PCM frame when not encoding
        here, or None (nothing this period: DTX)."""
        if self.readyState != "live":
            raise MediaStreamError
        ticker = self._ticker
        if ticker is None:
            ticker = self._ticker = Ticker.lane()
        if self._tick is None:
            self._tick = ticker.next_tick()
        else:
            skip = self._skippable()
            if skip:
                await self._sleep(ticker, skip)
                if self.readyState != "live":
                    raise MediaStreamError
            self._tick += self._frames_sent
        await ticker.wait(self._tick)
        late = time.monotonic() - ticker.due(self._tick)
        if late > 0.2:
            # Fell far behind (a stall): rejoin the grid now instead of
            # bursting out the missed frames.
            self._tick = ticker.next_tick() - 1
        playout = self.playout
        per = 1
        if self.max_frames > 1 and self._encoder is not None and playout.holds(self.max_frames * WEBRTC_FRAME_SAMPLES):
            # This frame's audio and the next ones' are queued already: they
            # all go in this packet, taken in one step.
            per = self.max_frames
        pcm = playout.next_frame(per)
        if playout.on_output is not None:
            playout.on_output(pcm)
        audible = pcm is not SILENCE and nonzero(pcm)
        self._frames_sent = per
        self._stats.frames(audible, per)
        pts = self._n * WEBRTC_FRAME_SAMPLES
        self._n += per
        if self._encoder is None:
            self._stats.sent(late)  # lateness of packets sent only
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = WEBRTC_RATE
            frame.pts = pts
            frame.time_base = self._tb
            return frame
        if audible:
            self._zeros = 0
            data = self._encoder.encode(pcm)
        else:
            self._zeros += 1
            if self._zeros <= self.SILENCE_SETTLE:
                data = self._encoder.encode(pcm)
            elif not self.dtx or self._dtx_packet is None:
                data = self._silence
            else:
                # The first DTX packet, then one every dtx_interval_ms.
                every = max(1, self.dtx_interval_ms // 20)
                self._in_dtx = True
                if (self._zeros - self.SILENCE_SETTLE - 1) % every:
                    return None  # nothing sent: no lateness to speak of
                self.talkspurt_start = False
                self._stats.sent(late)  # lateness of packets sent only
                return self._dtx_packet, pts
        # Sound (or the encoder's decay into silence) after DTX, or the first
        # packet of the stream: a new talkspurt.
        self.talkspurt_start = self._in_dtx
        self._in_dtx = False
        self._stats.sent(late)  # lateness of packets sent only
        return data, pts

    # -- idle (DTX) sessions: no per-tick work --------------------------------
    #
    # In a DTX gap with nothing to play, a tick's whole work is: wake up, take
    # SILENCE from the playout, hand it to the echo guard, count it, send
    # nothing. Most sessions are in such a gap most of the time (the agent
    # speaks perhaps half of a call), so the track sleeps instead until the
    # next keep-alive is due or the playout gets audio (Playout.on_wake), and
    # then accounts the skipped ticks in one step (catch_up): the RTP clock
    # (pts), the DTX count, the frame counter and the echo guard's history
    # (Playout.on_silence) come out exactly as with a wake-up every tick.

    def _skippable(self) -> int:
        """Ticks from now on that would send nothing and that nothing but a
        wake-up can change: 0 unless in a DTX gap with an idle playout."""
        if self._encoder is None or not self.dtx or self._dtx_packet is None or \
                self._zeros < self.SILENCE_SETTLE or not self.playout.idle:
            return 0
        every = max(1, self.dtx_interval_ms // 20)
        # The tick after the one with `_zeros` silent frames is a keep-alive
        # when (_zeros - SILENCE_SETTLE) % every == 0 (see _next).
        return (self.SILENCE_SETTLE - self._zeros) % every

    async def _sleep(self, ticker: Ticker, skip: int) -> None:
        """Sleep through `skip` ticks: until the keep-alive after them is due,
        the playout has audio again, or the track stops."""
        fut = asyncio.get_running_loop().create_future()
        self._wake, self._skip_left = fut, skip
        self.playout.on_wake = self._wake_up
        ticker.arm(self._tick + skip + 1, fut)
        try:
            await fut
        finally:
            self.playout.on_wake = None
            self._wake = None
            # Woken by the keep-alive's tick: every skipped tick is due (all
            # of them, even if the timer ran a hair early); by the playout:
            # _wake_up accounted what was due and left none.
            self._account(self._skip_left)

    def _wake_up(self) -> None:
        """The playout has audio again (Playout.on_wake): the ticks already due
        were silence; the next one plays it."""
        self.catch_up()
        self._skip_left = 0  # not one more period as silence
        self.playout.on_wake = None
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def catch_up(self) -> None:
        """Account, as silence, the skipped packet periods that are due by now
        (all of them once the keep-alive is due). Also called before the echo
        guard's history is read (EchoGuard.sync)."""
        if not self._skip_left:
            return
        # skipped tick j (from 0) after self._tick is tick self._tick + j + 1
        due = self._ticker.next_tick() - self._tick - 1
        self._account(min(self._skip_left, due))

    def _account(self, k: int) -> None:
        """k skipped ticks, as silence."""
        if k <= 0:
            return
        self._skip_left -= k
        self._tick += k
        self._n += k
        self._zeros += k
        self._stats.frames(False, k)
        if self.playout.on_silence is not None:
            self.playout.on_silence(k)
        elif self.playout.on_output is not None:
            for _ in range(k):
                self.playout.on_output(SILENCE)

    def stop(self) -> None:
        super().stop()
        self._stats.publish()  # nothing of this track's last tick is left out
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)  # a sleeping recv() ends now

    def _packet(self, data: bytes, pts: int) -> av.Packet:
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = self._tb
        return packet


# -- sending ------------------------------------------------------------------

_S = "_RTCRtpSender__"  # aiortc's name-mangled sender internals
_SENDER_ATTRS = ("track", "mid", "rtp_header_extensions_map", "rtp_started", "rtp_exited", "ntp_timestamp",
                 "rtp_timestamp", "octet_count", "packet_count", "encoder", "started", "kind",
                 "rtcp_started", "rtcp_exited", "lsr", "lsr_time", "cname")
# Seconds between RTCP reports of an audio stream: libwebrtc's default for audio
# (kDefaultAudioReportInterval, what browsers send), varied by 0.5-1.5x as RFC
# 3550 6.3.1 asks. aiortc reports every 0.5-1.5 s for any media.
RTCP_INTERVAL_S = 5.0
_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)


class FastSender(RTCRtpSender):
    """An audio RTCRtpSender whose RTP loop sends PacedOpusTrack's payloads
    with less per-packet Python than aiortc's `_run_rtp` (no av.Packet, no
    RtpPacket object, header extensions laid out once, the send time from
    time.time() rather than datetime), and sets the RTP marker bit on the first
    packet of each talkspurt only (RFC 3551 4.1; aiortc sets it on every audio
    packet), which with DTX tells the receiver a gap was silence, not loss.

    What stays aiortc's: SRTP and the transport (`transport._send_rtp`), RTCP
    (its sender reports read the counters kept here), and every other track
    or codec (the stock loop). Packets are not kept for retransmission: audio
    negotiates no NACK (checked: with NACK the stock loop runs)."""

    async def _run_rtcp(self) -> None:
        """aiortc's sender reports (SR + SDES CNAME, BYE at the end), every
        RTCP_INTERVAL_S instead of every second: per session, each is a Python
        packet build, an SRTCP protect and a send, and a parse at the far end."""
        getattr(self, _S + "rtcp_started").set()
        try:
            while True:
                await asyncio.sleep(RTCP_INTERVAL_S * (0.5 + random.random()))
                ntp = getattr(self, _S + "ntp_timestamp")
                packets: list = [RtcpSrPacket(ssrc=self._ssrc, sender_info=RtcpSenderInfo(
                    ntp_timestamp=ntp, rtp_timestamp=getattr(self, _S + "rtp_timestamp"),
                    packet_count=getattr(self, _S + "packet_count") & 0xFFFFFFFF,
                    octet_count=getattr(self, _S + "octet_count") & 0xFFFFFFFF))]
                setattr(self, _S + "lsr", (ntp >> 16) & 0xFFFFFFFF)
                setattr(self, _S + "lsr_time", time.time())
                cname = getattr(self, _S + "cname")
                if cname is not None:
                    packets.append(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, cname.encode("utf8"))])]))
                await self._send_rtcp(packets)
        except asyncio.CancelledError:
            pass
        await self._send_rtcp([RtcpByePacket(sources=[self._ssrc])])
        getattr(self, _S + "rtcp_exited").set()

    async def _run_rtp(self, codec) -> None:
        track = getattr(self, _S + "track")
        if not isinstance(track, PacedOpusTrack) or not track.encodes_opus or \
                any(fb.type == "nack" for fb in (codec.rtcpFeedback or [])):
            return await super()._run_rtp(codec)
        getattr(self, _S + "rtp_started").set()
        first, head, tail = _extension_layout(getattr(self, _S + "rtp_header_extensions_map"), getattr(self, _S + "mid"))
        seq = random_sequence_number()
        ts_origin = random32()
        pt, ssrc = codec.payloadType, self._ssrc
        transport = self.transport
        packets = octets = 0
        try:
            while True:
                current = getattr(self, _S + "track")
                if current is track:
                    payload, pts = await track.next_payload()
                    if not self._enabled:
                        continue
                    payloads, pts, marker = (payload,), pts, track.talkspurt_start
                elif not current:
                    await asyncio.sleep(0.02)
                    continue
                else:
                    # replaceTrack (the edge never does it): aiortc's encoder for
                    # the new track, in this loop, so the sequence numbers (SRTP's
                    # replay index) run on.
                    frame = await self._next_encoded_frame(codec)
                    if frame is None:
                        continue
                    payloads, pts, marker = frame.payloads, frame.timestamp, 1
                timestamp = (ts_origin + pts) & 0xFFFFFFFF
                for payload in payloads:
                    now = time.time() + _NTP_EPOCH_OFFSET
                    header = _RTP_HEADER.pack(first, (marker << 7) | pt, seq, timestamp, ssrc)
                    if tail is None:
                        data = b"".join((header, head, payload))
                    else:  # abs-send-time: 6.18 fixed-point seconds, 24 bits
                        data = b"".join((header, head, (int(now * 262144) & 0xFFFFFF).to_bytes(3, "big"), tail, payload))
                    await transport._send_rtp(data)
                    # What aiortc's RTCP sender reports read (and what it counts).
                    setattr(self, _S + "ntp_timestamp", int(now * 4294967296.0))
                    setattr(self, _S + "rtp_timestamp", timestamp)
                    octets += len(payload)
                    packets += 1
                    setattr(self, _S + "octet_count", octets)
                    setattr(self, _S + "packet_count", packets)
                    seq = (seq + 1) & 0xFFFF
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            log.exception("RTP send loop failed")
        # as aiortc's loop ends: stop the track, say the loop exited
        if getattr(self, _S + "track"):
            getattr(self, _S + "track").stop()
            setattr(self, _S + "track", None)
        getattr(self, _S + "rtp_exited").set()


_RTP_HEADER = struct.Struct("!BBHLL")


def _extension_layout(extensions_map, mid: str | None) -> tuple[int, bytes, bytes | None]:
    """The RTP header extensions aiortc would write for a packet (mid and
    abs-send-time, whichever were negotiated): the header's first byte, and the
    extension bytes before and after the 3 abs-send-time bytes (None after:
    no abs-send-time, the extensions are constant). Found by serializing twice
    with different send times, so the layout is aiortc's own (one- or two-byte
    form, ids, padding)."""
    from aiortc.rtp import HeaderExtensions

    profile, v0 = extensions_map.set(HeaderExtensions(mid=mid, abs_send_time=0))
    _, v1 = extensions_map.set(HeaderExtensions(mid=mid, abs_send_time=0xFFFFFF))
    if not v0:
        return 0x80, b"", None
    head = struct.pack("!HH", profile, len(v0) >> 2)
    diff = [i for i, (a, b) in enumerate(zip(v0, v1)) if a != b]
    if len(v0) != len(v1) or len(diff) != 3 or diff[2] - diff[0] != 2:
        return 0x90, head + v0, None
    i = diff[0]
    return 0x90, head + v0[:i], v0[i + 3 :]


def _sender_supported(sender: RTCRtpSender) -> bool:
    return type(sender) is RTCRtpSender and all(hasattr(sender, _S + a) for a in _SENDER_ATTRS) \
        and hasattr(sender, "_enabled") and hasattr(sender, "_ssrc") and hasattr(sender.transport, "_send_rtp")


# -- receiving ----------------------------------------------------------------


class _Batch:
    """What ReorderBuffer releases: (RTP timestamp, payload) of the packets in
    order, None for a lost one. Quacks like aiortc's JitterFrame where the
    receiver touches it (timestamp)."""

    __slots__ = ("timestamp", "items")

    def __init__(self, timestamp: int, items: list) -> None:
        self.timestamp = timestamp
        self.items = items


class ReorderBuffer:
    """Stands in for aiortc's audio JitterBuffer (same `add` contract): releases
    each packet as soon as every earlier one is in; waits for a missing packet
    only while fewer than `max_wait` later packets have arrived, then declares
    it lost (None in the batch: the decoder conceals it)."""

    capacity = 64  # aiortc's receiver reads it in logs only

    def __init__(self, max_wait: int = 2) -> None:
        self.max_wait = max(0, max_wait)
        self._next: int | None = None
        self._held: dict[int, object] = {}
        self.lost = 0
        self.late = 0
        counter = metric("voxmesh_inbound_frames_lost_total")
        self._lost_metric, self._late_metric = counter.labels(reason="lost"), counter.labels(reason="late")

    def add(self, packet) -> tuple[bool, _Batch | None]:
        seq = packet.sequence_number
        if self._next is None:
            self._next = seq
        elif seq != self._next and not uint16_gt(seq, self._next):
            # Older than what we released: a duplicate or too late to use.
            if uint16_add(self._next, -seq) > 1000:
                self._reset(seq)  # a sequence jump backwards (a new stream): start over
            else:
                self.late += 1
                self._late_metric.inc()
                return False, None
        elif uint16_add(seq, -self._next) > 1000:
            self._reset(seq)  # a big jump forwards: the sender restarted
        self._held[seq] = packet
        items: list = []
        ts = None
        while True:
            p = self._held.pop(self._next, None)
            if p is None:
                # Wait for it while fewer than max_wait later packets are in,
                # i.e. for at most max_wait x 20 ms.
                if not self._held or len(self._held) < self.max_wait:
                    break
                items.append(None)  # give up on it: concealed downstream
                self.lost += 1
                self._lost_metric.inc()
            else:
                items.append((p.timestamp, p._data))
                ts = p.timestamp if ts is None else ts
            self._next = uint16_add(self._next, 1)
        if not items:
            return False, None
        return False, _Batch(ts if ts is not None else packet.timestamp, items)

    def _reset(self, seq: int) -> None:
        self._held.clear()
        self._next = seq


class InlineDecoder:
    """Stands in for the decoder thread's input queue: `put((codec, batch))`
    decodes on the caller's thread (the event loop) and queues the frames on
    the track. Opus goes to 16 kHz mono through libopus, handed on in chunks of
    `chunk_frames` x 20 ms; any other codec goes through aiortc's decoder at its
    own rate, frame by frame (the session resamples it).

    Why chunks: every hand-on costs the session a task wake-up, its per-frame
    bookkeeping and one gRPC message to stt, whatever its length; 40 ms chunks
    halve that for 10 ms more delay on average (stt's VAD works on 32 ms
    windows anyway). While the caller is talking (a packet's energy well over
    the tracked noise floor) chunks grow to `voiced_chunk_frames`: delay inside
    speech only makes interims a little later, and the end of the turn does
    not wait for it, since the first quiet packet hands on everything pending
    at once, and the pause that ends a turn is quiet.

    `sink`, when set, takes each chunk's PCM in a plain call instead of the
    track's queue (the session's inbound handler: no task wake-up per chunk);
    the end of the track still goes to the queue (None).

    `tap`, when set, sees every decoded packet's PCM at once, before chunking:
    the session's barge-in onset detector (voxmesh_edge.onset) runs there, so
    the chunk size adds nothing to the time the agent takes to stop.

    Opus DTX (`request_opus_fmtp`): a caller whose user is silent sends one DTX packet
    (a payload of <= 2 bytes) and then one every 400 ms or so, with the RTP
    timestamps running on and the sequence numbers contiguous. The gap between
    where the audio handed on so far ends and the next packet's timestamp is
    handed on as digital silence, so the audio clock stt and the onset detector
    see is the caller's (a turn's pause is as long as it was). A forward jump
    of more than MAX_GAP_S is a discontinuity (a restarted sender), not
    silence: it is not filled.

    Browsers do not stay silent: libopus codes a comfort-noise "refresh" frame
    every ~400 ms of DTX (then a 1-byte packet again). A coded packet that comes
    after a timestamp jump inside a gap and is not voiced (see `_voiced`) is
    such a refresh: the gap goes on (and a refresh whose time the live fill
    already covered is dropped, like a keep-alive).

    Waiting for the next packet to fill a gap would hold stt's clock still for
    up to 400 ms while the user is silent, and the end of their turn with it:
    stt ends a turn on silence it has received. So with `filler` (a process's
    `DtxFiller`), once the caller has said it is in DTX the silence is also
    handed on in real time, `fill_live`, running FILL_LAG behind the caller's
    clock (the longest packet seen + FILL_MARGIN_S: by then a packet of speech
    would have arrived), in `chunk_frames` chunks while stt may still be
    deciding the end of a turn on it, and in `dtx_chunk_s` chunks once it cannot
    be: `settled()` (the session: no user turn open at stt) after DTX_SETTLE_S of
    gap (stt's SpeechStarted may come after a short utterance's gap began), or
    after `dtx_fine_s` in any case (longer than any end-of-turn wait). The user
    listens in DTX while the agent talks, and a message per 40 ms to stt then
    carries only its clock: measured, fine chunks through every 3 s gap cost the
    edge ~10 % more CPU than a chunk per keep-alive. A packet of
    speech that arrives after its time was already filled (jitter beyond the
    margin) is handed on whole, never cut: the audio handed on then runs ahead
    of the caller's clock by the overlap, and the next gap's silence is
    shortened by as much."""

    MAX_GAP_S = 2.0
    FILL_MARGIN_S = 0.02
    DTX_SETTLE_S = 0.6
    _CLOCK = 48000  # Opus' RTP clock rate (RFC 7587), whatever the audio's rate
    _FRAME = 960  # 20 ms in RTP ticks
    _MASK = 0xFFFFFFFF

    # A packet is "voiced" above max(VOICED_DBFS, noise floor + VOICED_MARGIN_DB);
    # the floor is the quietest of the last FLOOR_PACKETS packets (1-2 s): speech
    # dips between words, a steady noise does not.
    VOICED_DBFS = -50.0
    VOICED_MARGIN_DB = 10.0
    FLOOR_PACKETS = 50

    def __init__(self, output: asyncio.Queue, rate: int = STT_RATE, chunk_frames: int = 1,
                 tap: Callable[[np.ndarray], None] | None = None, *, voiced_chunk_frames: int = 0,
                 filler: DtxFiller | None = None, settled: Callable[[], bool] | None = None,
                 dtx_fine_s: float = 2.5, dtx_chunk_s: float = 0.4,
                 clock: Callable[[], float] = time.monotonic,
                 sink: Callable[[np.ndarray], None] | None = None) -> None:
        self._out = output
        self._sink = sink
        self._rate = rate
        self._tb = fractions.Fraction(1, rate)
        self._codec_name: str | None = None
        self._opus: opus.Decoder | None = None
        self._fallback = None
        self._pts = 0
        self._chunk = max(1, chunk_frames) * rate // 50
        self._voiced_chunk = max(self._chunk, voiced_chunk_frames * rate // 50)
        self._levels: collections.deque[float] = collections.deque(maxlen=self.FLOOR_PACKETS)
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self.tap = tap
        self._next_ts: int | None = None  # RTP timestamp where the audio handed on ends
        self.dtx_filled = 0  # samples of silence put in DTX gaps
        self.filler = filler
        self._clock = clock
        self._fine = int(dtx_fine_s * self._CLOCK)
        self._settle = int(self.DTX_SETTLE_S * self._CLOCK)
        self.settled = settled
        self._coarse = max(self._FRAME, int(dtx_chunk_s * self._CLOCK) // self._FRAME * self._FRAME)
        self._anchor: tuple[float, int] | None = None  # (arrival time, RTP ts where that packet ends)
        self._packet_ticks = self._FRAME  # the longest packet of speech seen
        self._gap_start: int | None = None  # RTP ts where the caller's current DTX gap began
        self._ahead = 0  # RTP ticks handed on beyond the caller's clock

    def put(self, item) -> None:
        if item is None:
            self._flush()
            self._gap_start = None
            if self.filler is not None:
                self.filler.discard(self)
            self._out.put_nowait(None)  # end of the track
            return
        codec, batch = item
        if codec.name != self._codec_name:
            self._codec_name = codec.name
            self._opus, self._fallback = None, None
            if codec.name.lower() == "opus" and opus.available():
                self._opus = opus.Decoder(self._rate)
            else:
                from aiortc.codecs import get_decoder

                self._fallback = get_decoder(codec)
        items = batch.items if isinstance(batch, _Batch) else [(batch.timestamp, batch.data)]
        for item in items:
            if self._opus is not None:
                try:
                    if item is None:
                        pcm = self._opus.conceal()
                    else:
                        pcm = self._opus.decode(item[1])
                except opus.OpusError as exc:
                    log.debug("opus decode failed: %s", exc)
                    continue
                ticks = pcm.size * self._CLOCK // self._rate
                voiced: bool | None = None
                if item is not None:
                    ts, dtx = item[0], len(item[1]) <= 2
                    if self.filler is not None:
                        if not dtx and self._gap_start is not None and self._anchor is not None \
                                and self._FRAME <= (ts - self._anchor[1]) & self._MASK < 1 << 31:
                            # A coded packet after a jump, in a DTX gap: a browser's
                            # comfort-noise refresh (libopus codes one every ~400 ms
                            # of DTX) unless it sounds like speech; the gap goes on.
                            voiced = self._voiced(pcm)
                            dtx = not voiced
                        self._anchor = (self._clock(), (ts + ticks) & self._MASK)
                    if self._next_ts is not None and 0 < (self._next_ts - ts) & self._MASK < 1 << 31:
                        # Its time was filled already (live fill): a keep-alive or a
                        # refresh adds nothing to that silence; speech is handed on whole.
                        if dtx:
                            continue
                        self._ahead += (self._next_ts - ts) & self._MASK
                    else:
                        self._fill_gap(ts)
                    self._next_ts = ts
                    self._dtx_state(dtx, ts, ticks)
                if self._next_ts is not None:
                    self._next_ts = (self._next_ts + ticks) & self._MASK
                if self._voiced_chunk > self._chunk and voiced is None:
                    voiced = self._voiced(pcm)
                self._hand_on(pcm, bool(voiced))
            elif item is not None:
                from aiortc.jitterbuffer import JitterFrame

                try:
                    frames = self._fallback.decode(JitterFrame(item[1], batch.timestamp))
                except av.FFmpegError as exc:
                    log.debug("decode failed: %s", exc)
                    continue
                for frame in frames:
                    self._out.put_nowait(frame)

    def _dtx_state(self, dtx: bool, ts: int, ticks: int) -> None:
        if not dtx:
            self._packet_ticks = max(self._packet_ticks, ticks)
            self._gap_start = None
        elif self._gap_start is None:
            self._gap_start = ts
            if self.filler is not None:
                self.filler.add(self)

    def fill_live(self) -> bool:
        """Hand on the silence of the current DTX gap up to FILL_LAG behind the
        caller's clock (see the class doc); False when the caller is not in a
        DTX gap (any more), so the filler can forget this decoder."""
        if self._gap_start is None or self._anchor is None or self._next_ts is None:
            return False
        arrived, end = self._anchor
        elapsed = self._clock() - arrived
        if elapsed > self.MAX_GAP_S:
            # No keep-alive for this long: the sender stopped (or the path
            # broke), which is not silence; a later packet decides (_fill_gap).
            self._gap_start = None
            return False
        lag = self._packet_ticks + int(self.FILL_MARGIN_S * self._CLOCK)
        due = (end + round(elapsed * self._CLOCK) - lag - self._next_ts) & self._MASK
        if due >= 1 << 31:
            return True  # nothing due yet (the last packet ends later)
        due -= due % self._FRAME
        into = (self._next_ts - self._gap_start) & self._MASK
        coarse = into >= self._fine or (into >= self._settle and self.settled is not None and self.settled())
        if due < (self._coarse if coarse else self._FRAME):
            return True
        self._silence(due, live=True)
        self._next_ts = (self._next_ts + due) & self._MASK
        if coarse:
            self._flush()
        return True

    def _fill_gap(self, ts: int) -> None:
        if self._next_ts is None:
            return
        gap = (ts - self._next_ts) & self._MASK  # RTP timestamps wrap at 2^32
        if 0 < gap <= self.MAX_GAP_S * self._CLOCK:
            self._silence(gap)

    def _silence(self, ticks: int, live: bool = False) -> None:
        """Hand on `ticks` of the caller's silence, less what was handed on ahead
        (`live`: by fill_live, ahead of the next packet)."""
        paid = min(self._ahead, ticks)
        self._ahead -= paid
        n = (ticks - paid) * self._rate // self._CLOCK
        if n > 0:
            self.dtx_filled += n
            _dtx_metric("live" if live else "at_packet").inc(n / self._rate)
            self._hand_on(np.zeros(n, np.int16))

    def _voiced(self, pcm: np.ndarray) -> bool:
        if not pcm.size:
            return False
        x = pcm.astype(np.float32)
        db = 10.0 * math.log10(float(np.dot(x, x)) / (pcm.size * 1073741824.0) + 1e-12)
        floor = min(self._levels) if self._levels else -120.0  # of the packets before this one
        self._levels.append(db)
        return db > max(self.VOICED_DBFS, floor + self.VOICED_MARGIN_DB)

    def _hand_on(self, pcm: np.ndarray, voiced: bool = False) -> None:
        if self.tap is not None:
            self.tap(pcm)
        self._pending.append(pcm)
        self._pending_n += pcm.size
        if self._pending_n >= (self._voiced_chunk if voiced else self._chunk):
            self._flush()

    def _flush(self) -> None:
        if not self._pending_n:
            return
        pcm = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_n = [], 0
        if self._sink is not None:
            self._sink(pcm)
        else:
            self._out.put_nowait(PcmFrame(pcm, self._pts, self._rate, self._tb))
        self._pts += pcm.size


@functools.cache
def _dtx_metric(fill: str):
    return metric("voxmesh_inbound_dtx_seconds_total").labels(fill=fill)


class DtxFiller(_PerLoop):
    """Runs `InlineDecoder.fill_live` every 20 ms for the receivers of one event
    loop whose caller is in a DTX gap: one timer for the whole process, and
    none while no caller is silent."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._decoders: set[InlineDecoder] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._decoders)

    def add(self, decoder: InlineDecoder) -> None:
        self._decoders.add(decoder)
        if self._timer is None:
            self._timer = self._loop.call_later(FRAME_S, self.sweep)

    def discard(self, decoder: InlineDecoder) -> None:
        self._decoders.discard(decoder)

    def sweep(self) -> None:
        self._timer = None
        for decoder in list(self._decoders):
            try:
                keep = decoder.fill_live()
            except Exception:  # one broken stream must not stop the others' silence
                log.exception("DTX fill failed")
                keep = False
            if not keep:
                self._decoders.discard(decoder)
        if self._decoders:
            self._timer = self._loop.call_later(FRAME_S, self.sweep)


class _Layout:
    __slots__ = ("name", "channels")

    def __init__(self) -> None:
        self.name, self.channels = "mono", (None,)


class _Format:
    __slots__ = ("name", "is_planar")

    def __init__(self) -> None:
        self.name, self.is_planar = "s16", False


class PcmFrame:
    """What InlineDecoder hands the session: 16 kHz mono int16 PCM as a numpy
    array, with the av.AudioFrame attributes the receive path reads (pts,
    time_base, sample_rate, samples, layout, format, to_ndarray). An
    av.AudioFrame would be built from the array only for the session to turn
    it back into one (from_ndarray + to_ndarray: ~7 % of the edge's CPU at 20
    sessions); `frame_to_mono` takes `pcm` as it is."""

    __slots__ = ("pcm", "pts", "time_base", "sample_rate")
    layout = _Layout()
    format = _Format()

    def __init__(self, pcm: np.ndarray, pts: int, sample_rate: int, time_base: fractions.Fraction) -> None:
        self.pcm, self.pts, self.sample_rate, self.time_base = pcm, pts, sample_rate, time_base

    @property
    def samples(self) -> int:
        return self.pcm.size

    def to_ndarray(self) -> np.ndarray:
        return self.pcm.reshape(1, -1)


class _NoThread:
    """Where aiortc keeps its decoder thread: truthy, and joins at once."""

    def join(self, timeout: float | None = None) -> None:
        return None


class FastReceiver(RTCRtpReceiver):
    """An audio RTCRtpReceiver that decodes inline (see the module doc). Only
    `receive` differs: it registers with the transport and starts RTCP exactly
    as aiortc does, minus the decoder thread."""

    reorder_frames = 2
    chunk_frames = 1
    voiced_chunk_frames = 0
    tap: Callable[[np.ndarray], None] | None = None
    # (dtx_fine_s, dtx_chunk_s) when the answer asked for DTX: hand a silent
    # caller's gaps on in real time (InlineDecoder.fill_live); None: at the next packet
    live_dtx: tuple[float, float] | None = None
    settled: Callable[[], bool] | None = None  # see InlineDecoder
    sink: Callable[[np.ndarray], None] | None = None  # see InlineDecoder

    async def receive(self, parameters) -> None:
        if getattr(self, _P + "started") or getattr(self, _P + "kind") != "audio":
            return await super().receive(parameters)
        codecs = getattr(self, _P + "codecs")
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        rtx = getattr(self, _P + "rtx_ssrc")
        for encoding in parameters.encodings:
            if encoding.rtx:
                rtx[encoding.rtx.ssrc] = encoding.ssrc
        setattr(self, _P + "jitter_buffer", ReorderBuffer(self.reorder_frames))
        live = self.live_dtx
        setattr(self, _P + "decoder_queue", InlineDecoder(
            self._track._queue, chunk_frames=self.chunk_frames, tap=self.tap,
            voiced_chunk_frames=self.voiced_chunk_frames, settled=self.settled,
            filler=DtxFiller.of() if live else None, sink=self.sink,
            **({"dtx_fine_s": live[0], "dtx_chunk_s": live[1]} if live else {})))
        setattr(self, _P + "decoder_thread", _NoThread())
        getattr(self, _P + "transport")._register_rtp_receiver(self, parameters)
        setattr(self, _P + "rtcp_task", asyncio.ensure_future(self._run_rtcp()))
        setattr(self, _P + "started", True)

    async def _run_rtcp(self) -> None:
        """aiortc's receiver reports (RR), every RTCP_INTERVAL_S instead of
        every second (see FastSender._run_rtcp)."""
        getattr(self, _P + "rtcp_started").set()
        try:
            while True:
                await asyncio.sleep(RTCP_INTERVAL_S * (0.5 + random.random()))
                lsrs, lsr_times = getattr(self, _P + "lsr"), getattr(self, _P + "lsr_time")
                reports = []
                for ssrc, stream in getattr(self, _P + "remote_streams").items():
                    lsr = dlsr = 0
                    if ssrc in lsrs:
                        lsr = lsrs[ssrc]
                        delay = time.time() - lsr_times[ssrc]
                        if 0 < delay < 65536:
                            dlsr = int(delay * 65536)
                    reports.append(RtcpReceiverInfo(ssrc=ssrc, fraction_lost=stream.fraction_lost,
                                                    packets_lost=stream.packets_lost, highest_sequence=stream.max_seq,
                                                    jitter=stream.jitter, lsr=lsr, dlsr=dlsr))
                rtcp_ssrc = getattr(self, _P + "rtcp_ssrc")
                if rtcp_ssrc is not None and reports:
                    await self._send_rtcp(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports))
        except asyncio.CancelledError:
            pass
        getattr(self, _P + "rtcp_exited").set()

    def handle_rtp_now(self, packet: RtpHeader) -> None:
        """aiortc's `_handle_rtp_packet` for this receiver, as a plain call (see
        DirectRtp): for audio nothing in it waits (no bitrate estimator, no
        NACK, no PLI), and what it keeps is kept the same way (the sources
        seen, the statistics its RTCP receiver reports carry), then the packet
        goes to the reorder buffer and the inline decoder."""
        if not self._enabled:
            return
        active, codecs, streams, reorder, mapper, decoder = self._parts
        active[packet.ssrc] = clock.current_datetime()
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        if is_rtx(codec):  # audio negotiates no RTX; if it ever does, aiortc's own path unwraps it
            full = RtpPacket.parse(packet.data, self.transport._rtp_header_extensions_map)
            asyncio.ensure_future(self._handle_rtp_packet(full, arrival_time_ms=clock.current_ms()))
            return
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)
        packet._data = packet.payload  # audio: the payload is the frame (aiortc's depayload)
        _, batch = reorder.add(packet)
        if batch is not None:
            batch.timestamp = mapper.map(batch.timestamp)
            decoder.put((codec, batch))

    @functools.cached_property
    def _parts(self) -> tuple:
        """aiortc's per-receiver state that handle_rtp_now touches, looked up
        once (the objects live as long as the receiver)."""
        return tuple(getattr(self, _P + a) for a in ("active_ssrc", "codecs", "remote_streams", "jitter_buffer",
                                                     "timestamp_mapper", "decoder_queue"))


class DirectRtp:
    """Handles a session's SRTP packets in the UDP socket's callback.

    Stock aiortc puts every datagram in the ICE connection's asyncio.Queue; the
    DTLS transport's task wakes for each one and awaits its way through
    Connection.recv, recvfrom, Queue.get, _recv_next, _handle_rtp_data and the
    receiver's _handle_rtp_packet before the packet reaches the decoder. Here
    the ICE connection's `data_received` (what its socket protocol calls for
    every datagram that is not STUN) unprotects and parses an SRTP packet at
    once and calls the receiver (FastReceiver.handle_rtp_now): the same steps,
    with the same counters, minus the queue, the wake-up and the coroutines.

    Everything else goes the stock way, in order: DTLS, SRTCP (rare, and
    handled by aiortc's async RTCP code), packets before the DTLS handshake
    has set up SRTP, and any packet while the queue still holds datagrams
    (so none overtakes one queued before it)."""

    def __init__(self, dtls) -> None:
        self._dtls = dtls
        self._connection = dtls.transport._connection
        self._queued = self._connection.data_received  # the stock path
        self._queue = self._connection._queue
        self._failed = False
        self.handled = 0  # SRTP packets handled here

    @staticmethod
    def supported(dtls) -> bool:
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        return connection is not None and hasattr(connection, "data_received") \
            and isinstance(getattr(connection, "_queue", None), asyncio.Queue) \
            and all(hasattr(dtls, a) for a in ("_rx_srtp", "_rtp_router", "_rtp_header_extensions_map",
                                                _RX_BYTES, _RX_PACKETS))

    def install(self) -> None:
        self._connection.data_received = self.data_received

    def data_received(self, data: bytes, component: int) -> None:
        srtp = self._dtls._rx_srtp
        # RFC 5764 5.1.2: 128-191 is RTP or RTCP; RTCP packet types are 192-208 (is_rtcp)
        if srtp is None or len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 209 \
                or not self._queue.empty():
            self._queued(data, component)
            return
        self.handled += 1
        try:
            self._rtp(srtp, data)
        except Exception:  # a bad packet (or a bug) must not reach the socket's callback
            if not self._failed:
                self._failed = True
                log.exception("direct RTP handling failed (logged once per session)")

    def _rtp(self, srtp, data: bytes) -> None:
        dtls = self._dtls
        setattr(dtls, _RX_BYTES, getattr(dtls, _RX_BYTES) + len(data))
        setattr(dtls, _RX_PACKETS, getattr(dtls, _RX_PACKETS) + 1)
        try:
            data = srtp.unprotect(data)
            packet = RtpHeader(data)
        except (pylibsrtp.Error, ValueError):
            return  # as aiortc: dropped (a replay, a bad tag, a malformed header)
        receiver = dtls._rtp_router.route_rtp(packet)
        if type(receiver) is FastReceiver:
            receiver.handle_rtp_now(packet)
        elif receiver is not None:  # a stock receiver wants aiortc's whole packet
            full = RtpPacket.parse(data, dtls._rtp_header_extensions_map)
            asyncio.ensure_future(receiver._handle_rtp_packet(full, arrival_time_ms=clock.current_ms()))


class RtpHeader:
    """What the fast receive path reads of an RTP packet (RFC 3550 5.1): payload
    type, sequence number, timestamp, SSRC and payload. aiortc's RtpPacket.parse
    also decodes every header extension into an object, which nothing on this
    path reads. Raises ValueError on a malformed packet, as RtpPacket.parse does."""

    __slots__ = ("data", "payload_type", "sequence_number", "timestamp", "ssrc", "payload", "_data")
    _FIXED = struct.Struct("!BBHLL")

    def __init__(self, data: bytes) -> None:
        if len(data) < 12:
            raise ValueError("RTP packet length is less than 12 bytes")
        first, second, self.sequence_number, self.timestamp, self.ssrc = self._FIXED.unpack_from(data)
        if first >> 6 != 2:
            raise ValueError("RTP packet has invalid version")
        pos = 12 + 4 * (first & 0x0F)  # CSRCs
        if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
            if len(data) < pos + 4:
                raise ValueError("RTP packet has a truncated extension profile / length")
            pos += 4 + 4 * int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = len(data)
        if first & 0x20:  # padding: its length is the last byte
            end -= data[-1]
        if pos > end:
            raise ValueError("RTP packet is shorter than its header")
        self.data = data
        self.payload_type = second & 0x7F
        self.payload = data[pos:end]


def _receiver_supported(receiver: RTCRtpReceiver) -> bool:
    return type(receiver) is RTCRtpReceiver and all(hasattr(receiver, _P + a) for a in _RECEIVER_ATTRS) \
        and hasattr(receiver, "_run_rtcp") and hasattr(receiver, "_track")


_warned = False


def accelerate_receiver(receiver, reorder_frames: int = 2, chunk_ms: int = 20,
                        tap: Callable[[np.ndarray], None] | None = None,
                        live_dtx: tuple[float, float] | None = None, voiced_chunk_ms: int = 0,
                        settled: Callable[[], bool] | None = None,
                        sink: Callable[[np.ndarray], None] | None = None) -> dict[str, bool]:
    """The receive half of `accelerate` (which see), for a receiver whose
    transport exists and has not started: an answerer's after the offer is
    applied, an offerer's (the benchmark's callers) before the answer is."""
    global _warned
    did = {"receiver": False, "direct_rtp": False}
    if _receiver_supported(receiver) and not getattr(receiver, _P + "started"):
        receiver.__class__ = FastReceiver  # same layout: only receive() differs
        receiver.reorder_frames = reorder_frames
        receiver.chunk_frames = max(1, chunk_ms // 20)
        receiver.tap = tap
        receiver.live_dtx = live_dtx
        receiver.voiced_chunk_frames = voiced_chunk_ms // 20
        receiver.settled = settled
        receiver.sink = sink
        did["receiver"] = True
        dtls = receiver.transport
        if DirectRtp.supported(dtls):
            if not isinstance(getattr(dtls.transport._connection.data_received, "__self__", None), DirectRtp):
                DirectRtp(dtls).install()  # once per transport (transceivers share it)
            did["direct_rtp"] = True
    elif not _warned:
        _warned = True
        log.warning("aiortc receiver internals not as expected: stock receive path (decoder thread)")
    return did


def accelerate(transceiver, track: PacedOpusTrack, reorder_frames: int = 2, chunk_ms: int = 20,
               tap: Callable[[np.ndarray], None] | None = None,
               live_dtx: tuple[float, float] | None = None, voiced_chunk_ms: int = 0,
               settled: Callable[[], bool] | None = None,
               sink: Callable[[np.ndarray], None] | None = None) -> dict[str, bool]:
    """Put one session's audio transceiver on the fast path, after the remote
    offer is applied and before the transport starts. `live_dtx`: (fine, chunk)
    seconds when the answer will ask the caller for DTX, `settled` whether no
    user turn is open at stt, `sink` takes the 16 kHz chunks instead of the
    receiver's track (see InlineDecoder).
    Returns what it did ("receiver": inbound audio is decoded here, and `tap`
    sees every packet; "direct_rtp": its SRTP packets are handled in the
    socket's callback (DirectRtp);
    "encoder": agent audio is encoded here; "sender": FastSender sends it)."""
    did = {**accelerate_receiver(transceiver.receiver, reorder_frames, chunk_ms, tap, live_dtx, voiced_chunk_ms,
                                 settled, sink), "encoder": False, "sender": False}
    codecs = getattr(transceiver, "_codecs", None) or []
    if codecs and codecs[0].mimeType.lower() == "audio/opus":
        did["encoder"] = track.use_opus()
    sender = transceiver.sender
    if did["encoder"] and _sender_supported(sender) and not getattr(sender, _S + "started"):
        sender.__class__ = FastSender  # same layout: only _run_rtp() differs
        did["sender"] = True
    return did

