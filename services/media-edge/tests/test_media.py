"""The media fast path (voxmesh_edge.media, voxmesh_edge.opus): the reorder
buffer's release rules, libopus round trips, and a real aiortc call whose
receiver and sender are switched to the fast path: the caller's audio arrives
at 16 kHz mono, complete and in order, without aiortc's decoder thread, and the
agent's Opus packets play at the caller."""

from __future__ import annotations

import asyncio
import fractions
import threading

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from voxmesh.core.webrtc import configure_ice_hosts
from voxmesh.testing.wait import until
from voxmesh_edge import opus
from voxmesh_edge.media import DirectRtp, FastReceiver, FastSender, PacedOpusTrack, ReorderBuffer, Ticker, accelerate, dtx_packet
from voxmesh_edge.playout import Playout, Segment

pytestmark = pytest.mark.skipif(not opus.available(), reason="libopus not found")


class Pkt:
    def __init__(self, seq: int) -> None:
        self.sequence_number = seq
        self.timestamp = seq * 960
        self._data = bytes([seq % 256])


def released(buf: ReorderBuffer, seqs) -> list:
    out = []
    for s in seqs:
        _, batch = buf.add(Pkt(s))
        if batch is not None:
            out += [None if d is None else d[1][0] for d in batch.items]
    return out


def test_in_order_packets_are_released_at_once():
    buf = ReorderBuffer(max_wait=2)
    for s in range(5):
        _, batch = buf.add(Pkt(s))
        assert [d[1][0] for d in batch.items] == [s] and batch.items[0][0] == s * 960


def test_a_reordered_packet_is_waited_for_and_a_lost_one_concealed():
    buf = ReorderBuffer(max_wait=2)
    # 2 and 3 swapped: 3 waits for 2, then both go, in order.
    assert released(buf, [0, 1, 3, 2, 4]) == [0, 1, 2, 3, 4]
    # 6 lost: 7 waits, at 8 the wait (2 frames) is over: 6 is concealed.
    assert released(buf, [5, 7, 8, 9]) == [5, None, 7, 8, 9]
    # 6 arriving now is too late, and a duplicate is dropped.
    assert released(buf, [6, 9, 10]) == [10]
    assert buf.lost == 1 and buf.late == 2


def test_sequence_numbers_wrap_and_restarts_resync():
    buf = ReorderBuffer(max_wait=2)
    assert released(buf, [65534, 65535, 0, 1]) == [65534 % 256, 255, 0, 1]
    assert released(buf, [30000, 30001]) == [30000 % 256, 30001 % 256]  # a new stream


def test_zero_wait_never_holds():
    buf = ReorderBuffer(max_wait=0)
    assert released(buf, [0, 2, 3]) == [0, None, 2, 3]


def test_opus_round_trip_at_16k_and_concealment():
    t = np.arange(48000)
    pcm = (8000 * np.sin(2 * np.pi * 440 * t / 48000)).astype(np.int16)
    enc, dec = opus.Encoder(48000, 32000, 6), opus.Decoder(16000)
    out = [dec.decode(enc.encode(pcm[i : i + 960])) for i in range(0, pcm.size, 960)]
    assert all(o.size == 320 for o in out)
    y = np.concatenate(out[5:]).astype(np.float32)
    # still a 440 Hz tone of about the same level, now at 16 kHz
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16000 / y.size - 440) < 5
    assert 0.5 < np.sqrt(np.mean(y**2)) / (8000 / np.sqrt(2)) < 1.5
    assert dec.conceal().size == 320


class Tone(MediaStreamTrack):
    """A caller's microphone: a 440 Hz tone, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.t0 = None

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        self.t0 = self.t0 or loop.time()
        await asyncio.sleep(max(0, self.t0 + self.n * 0.02 - loop.time()))
        t = np.arange(self.n * 960, (self.n + 1) * 960)
        frame = AudioFrame.from_ndarray((6000 * np.sin(2 * np.pi * 440 * t / 48000)).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self.n * 960, fractions.Fraction(1, 48000)
        self.n += 1
        return frame


async def offer_to_edge(track: PacedOpusTrack) -> tuple[RTCPeerConnection, RTCPeerConnection, object]:
    """A caller sending a tone offers to an edge PeerConnection that answers
    with `track` as its audio: (caller, edge, the edge's transceiver), before
    the answer (so the transceiver can still be accelerated)."""
    configure_ice_hosts(("127.0.0.1",))
    caller, edge = RTCPeerConnection(), RTCPeerConnection()
    caller.addTrack(Tone())
    await caller.setLocalDescription(await caller.createOffer())
    await edge.setRemoteDescription(caller.localDescription)
    (transceiver,) = edge.getTransceivers()
    transceiver.sender.replaceTrack(track)
    transceiver.direction = "sendrecv"
    return caller, edge, transceiver


async def answer_and_connect(caller: RTCPeerConnection, edge: RTCPeerConnection, timeout: float = 10.0) -> None:
    """Finish the offer/answer and wait until ICE and DTLS are up on both sides,
    so a test's fixed listening time starts when media can flow, not before a
    connect that a loaded machine may make slow."""
    await edge.setLocalDescription(await edge.createAnswer())
    await caller.setRemoteDescription(edge.localDescription)
    await until(lambda: caller.connectionState == edge.connectionState == "connected", timeout)


async def test_a_call_on_the_fast_path_both_ways():
    playout = Playout(lambda *a: None, lambda t: None)
    track = PacedOpusTrack(playout)
    caller, edge, transceiver = await offer_to_edge(track)
    did = accelerate(transceiver, track, reorder_frames=2, chunk_ms=40)
    assert did == {"receiver": True, "direct_rtp": True, "encoder": True, "sender": True}
    assert isinstance(transceiver.receiver, FastReceiver)
    inbound: list = []
    outbound: list = []

    async def read(t, into) -> None:
        while True:
            try:
                into.append(await t.recv())
            except MediaStreamError:
                return

    tasks = []
    tasks.append(asyncio.ensure_future(read(transceiver.receiver.track, inbound)))
    caller.on("track", lambda t: tasks.append(asyncio.ensure_future(read(t, outbound))))
    threads_before = {t.name for t in threading.enumerate()}
    await answer_and_connect(caller, edge)
    # The agent says half a second of a 300 Hz tone.
    t = np.arange(24000)
    playout.enqueue(Segment("a1", 0, (8000 * np.sin(2 * np.pi * 300 * t / 48000)).astype(np.int16), (0, 5), [], "hello", True))
    await asyncio.sleep(2.0)
    # No decoder thread was started for the edge's receiver (the caller's stock one has its own).
    new_threads = [n for n in {t.name for t in threading.enumerate()} - threads_before if "decoder" in n]
    assert len(new_threads) <= 1
    assert inbound, "no inbound audio at the edge"
    assert all(f.sample_rate == 16000 and f.layout.name == "mono" and f.samples == 640 for f in inbound)
    pcm = np.concatenate([f.to_ndarray()[0] for f in inbound]).astype(np.float32)
    assert np.sqrt(np.mean(pcm[3200:] ** 2)) > 1000  # the tone came through
    pts = [f.pts for f in inbound]
    assert pts == sorted(pts) and all(b - a == 640 for a, b in zip(pts, pts[1:]))  # contiguous
    assert transceiver.receiver._RTCRtpReceiver__jitter_buffer.lost == 0
    # Its SRTP packets were handled in the socket's callback, with aiortc's
    # counters and RTCP statistics kept as its own path keeps them.
    dtls = transceiver.receiver.transport
    direct = dtls.transport._connection.data_received.__self__
    assert isinstance(direct, DirectRtp) and direct.handled >= len(inbound) * 2 - 4  # 20 ms packets, 40 ms chunks
    (stats,) = transceiver.receiver._RTCRtpReceiver__remote_streams.values()
    assert stats.packets_received >= direct.handled - 2
    assert dtls._RTCDtlsTransport__rx_packets >= direct.handled
    # A packet that is not valid SRTP is dropped, as aiortc drops it; nothing raises.
    direct.data_received(bytes([0x80, 111]) + bytes(40), 1)
    assert not direct._failed
    # The caller heard the agent's tone (decoded from our packets) between silences.
    levels = [float(np.sqrt(np.mean(f.to_ndarray().astype(np.float32) ** 2))) for f in outbound]
    assert max(levels) > 2000 and min(levels) < 50
    assert track.encodes_opus
    for pc in (caller, edge):
        await pc.close()
    for task in tasks:
        task.cancel()


async def test_the_ticker_wakes_every_track_on_the_same_grid():
    ticker = Ticker.of()
    k = ticker.next_tick()
    woke: list[float] = []

    async def waiter() -> None:
        await ticker.wait(k)
        woke.append(asyncio.get_running_loop().time())

    await asyncio.gather(*(waiter() for _ in range(20)))
    assert len(woke) == 20 and max(woke) - min(woke) < 0.005
    assert ticker._waiters == {}


async def test_tracks_are_spread_over_the_lanes_5_ms_apart():
    lanes = [Ticker.lane() for _ in range(8)]
    grids = {id(t): t for t in lanes}
    assert len(grids) == Ticker.LANES == 4
    assert all(lanes.count(t) == 2 for t in grids.values())  # in turn: evenly
    offsets = sorted((t.t0 - Ticker.of().t0) * 1000 for t in grids.values())
    assert offsets == pytest.approx([0, 5, 10, 15])
    # each lane is its own 20 ms grid
    playout = Playout(lambda *a: None, lambda t: None)
    tracks = [PacedOpusTrack(playout) for _ in range(4)]
    for track in tracks:
        await track.recv()
    assert len({id(track._ticker) for track in tracks}) == 4
    for track in tracks:
        track.stop()


def test_the_answer_asks_for_40_ms_packets_in_its_audio_section_only():
    from voxmesh_edge.media import request_ptime

    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\n"
    out = request_ptime(sdp, 40)
    audio, app = out.split("m=application")
    assert "a=ptime:40" in audio and "a=ptime" not in app
    assert request_ptime(sdp, 0) == sdp and request_ptime(out, 60) == out


def test_the_answer_asks_for_opus_dtx_and_wideband_in_the_opus_fmtp_only():
    from voxmesh_edge.media import request_opus_fmtp

    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\n"
           "a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\na=fmtp:0 x=1\r\n")
    out = request_opus_fmtp(sdp, usedtx=1, maxplaybackrate=16000)
    assert "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1;maxplaybackrate=16000\r\n" in out
    assert "a=fmtp:0 x=1\r\n" in out
    assert request_opus_fmtp(out, usedtx=1, maxplaybackrate=16000) == out  # nothing twice
    bare = request_opus_fmtp("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 OPUS/48000/2\r\na=ptime:40\r\n",
                             usedtx=1)
    assert "a=rtpmap:96 OPUS/48000/2\r\na=fmtp:96 usedtx=1\r\na=ptime:40" in bare


def _dtx_stream(dec, codec, enc, packets) -> None:
    """Feed (RTP timestamp, kind) packets: "speech" = 20 ms of tone, "dtx" = a DTX packet."""
    from voxmesh_edge.media import _Batch

    speech = (6000 * np.sin(2 * np.pi * 440 * np.arange(960) / 48000)).astype(np.int16)
    silence = enc.encode(np.zeros(960, np.int16))
    for ts, kind in packets:
        data = enc.encode(speech) if kind == "speech" else dtx_packet(silence)
        dec.put((codec, _Batch(ts, [(ts, data)])))


def test_dtx_gaps_are_handed_on_as_silence_on_the_callers_clock():
    """A caller in DTX sends a packet per 400 ms with the RTP clock running on:
    stt must get the whole gap as silence (its VAD ends the turn on it), the
    sequence numbers say nothing was lost. A jump beyond MAX_GAP_S is a
    discontinuity, not filled; timestamps wrap at 2^32."""
    from types import SimpleNamespace

    from voxmesh_edge.media import InlineDecoder

    codec, enc = SimpleNamespace(name="opus"), opus.Encoder(48000, 32000)
    taps: list[int] = []
    q: asyncio.Queue = asyncio.Queue()
    dec = InlineDecoder(q, chunk_frames=2, tap=lambda pcm: taps.append(pcm.size))
    start = 2**32 - 3 * 960  # the RTP clock wraps during the talkspurt
    talk = [((start + i * 960) & 0xFFFFFFFF, "speech") for i in range(5)]
    end = start + 5 * 960
    dtx = [((end + k * 19200) & 0xFFFFFFFF, "dtx") for k in range(3)]  # 3 DTX packets, 400 ms apart
    resume = [((end + 2 * 19200 + 960 + i * 960) & 0xFFFFFFFF, "speech") for i in range(4)]
    _dtx_stream(dec, codec, enc, talk + dtx + resume)
    frames = [q.get_nowait() for _ in range(q.qsize())]
    total = sum(f.samples for f in frames) + dec._pending_n
    # the caller's timeline: from the first packet to the end of the last one
    assert total == (5 * 960 + 2 * 19200 + 960 + 4 * 960) // 3
    assert dec.dtx_filled == 2 * (19200 - 960) // 3  # each 400 ms gap minus the DTX packet's own 20 ms
    assert sum(taps) == total  # the onset detector sees the same clock
    assert [f.pts for f in frames] == list(np.cumsum([0] + [f.samples for f in frames[:-1]]))

    dec2 = InlineDecoder(asyncio.Queue(), chunk_frames=1)
    _dtx_stream(dec2, codec, enc, [(0, "speech"), (960 + int(InlineDecoder.MAX_GAP_S * 48000) + 960, "speech")])
    assert dec2.dtx_filled == 0  # a restarted sender's jump is not silence


class _Clock:
    """Test double of time.monotonic: moves only when the test says."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Filler:
    """Test double of DtxFiller: records who asked to be swept; the test sweeps."""

    def __init__(self) -> None:
        self.decoders: set = set()

    def add(self, dec) -> None:
        self.decoders.add(dec)

    def discard(self, dec) -> None:
        self.decoders.discard(dec)


def _live_decoder(fine_s: float = 2.5, chunk_s: float = 0.4):
    from types import SimpleNamespace

    from voxmesh_edge.media import InlineDecoder

    q: asyncio.Queue = asyncio.Queue()
    clock, filler = _Clock(), _Filler()
    dec = InlineDecoder(q, chunk_frames=2, filler=filler, clock=clock, dtx_fine_s=fine_s, dtx_chunk_s=chunk_s)
    return dec, q, clock, filler, SimpleNamespace(name="opus"), opus.Encoder(48000, 32000)


def _drain(q) -> list:
    return [q.get_nowait() for _ in range(q.qsize())]


def test_a_dtx_gap_reaches_stt_as_silence_in_real_time_not_at_the_next_packet():
    """stt ends a turn on silence it has received: while the caller is in DTX
    the gap's silence must flow at the caller's pace (FILL_LAG behind), not
    wait up to 400 ms for the next keep-alive; the keep-alive then adds nothing
    twice, and the resumed speech lands where the caller's clock says."""
    dec, q, clock, filler, codec, enc = _live_decoder()
    talk = [(i * 960, "speech") for i in range(5)]  # 100 ms of speech, 20 ms packets
    for ts, kind in talk:
        clock.now += 0.02
        _dtx_stream(dec, codec, enc, [(ts, kind)])
    assert not filler.decoders  # speech: nothing to sweep
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(5 * 960, "dtx")])  # the caller goes silent
    assert filler.decoders == {dec}
    _drain(q)
    handed = dec._pts + dec._pending_n  # samples handed on so far (16 kHz)
    assert handed == 6 * 320
    # 200 ms later, no packet has come: the silence up to 40 ms (the 20 ms
    # packet + the 20 ms margin) behind the caller's clock is out.
    for _ in range(10):
        clock.now += 0.02
        assert dec.fill_live()
    frames = _drain(q)
    assert dec._pts + dec._pending_n == handed + (200 - 40) * 16
    assert all(not f.pcm.any() for f in frames) and all(f.samples == 640 for f in frames)
    # the keep-alive 400 ms after the gap began fills up to its own timestamp
    clock.now += 0.2
    _dtx_stream(dec, codec, enc, [(5 * 960 + 19200, "dtx")])
    assert dec._pts + dec._pending_n == handed + 400 * 16  # its own 20 ms included
    # speech again right after it: contiguous, nothing filled twice
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(5 * 960 + 19200 + 960, "speech")])
    assert dec._pts + dec._pending_n == handed + 420 * 16
    assert dec.dtx_filled == (400 - 20) * 16 and not dec.fill_live()


def test_a_browsers_comfort_noise_refresh_frames_do_not_end_the_dtx_gap():
    """libopus in DTX codes a refresh frame every ~400 ms, then a 1-byte packet:
    the gap (and its coarse chunks once no turn is open) goes on through them;
    speech after a jump ends it."""
    dec, q, clock, filler, codec, enc = _live_decoder(fine_s=2.5, chunk_s=0.4)
    dec.settled = lambda: True
    noise = (np.random.default_rng(3).standard_normal(960) * 15).astype(np.int16)  # ~-67 dBFS
    ts = 0
    for _ in range(10):  # speech, then the 200 ms of coded silence before DTX
        clock.now += 0.02
        _dtx_stream(dec, codec, enc, [(ts, "speech")])
        ts += 960
    for _ in range(10):
        clock.now += 0.02
        dec.put((codec, __import__("voxmesh_edge.media", fromlist=["_Batch"])._Batch(ts, [(ts, enc.encode(noise))])))
        ts += 960
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(ts, "dtx")])
    gap = dec._gap_start
    assert gap is not None
    ts += 960
    _drain(q)
    from voxmesh_edge.media import _Batch

    sizes = []
    for k in range(6):  # 6 refresh cycles of 400 ms: refresh frame + a 1-byte packet each
        for _ in range(19):
            clock.now += 0.02
            dec.fill_live()
            sizes += [f.samples for f in _drain(q)]
        ts += 18 * 960
        clock.now += 0.02
        dec.put((codec, _Batch(ts, [(ts, enc.encode(noise))])))
        ts += 960
        _dtx_stream(dec, codec, enc, [(ts, "dtx")])
        ts += 960
        sizes += [f.samples for f in _drain(q)]
        assert dec._gap_start == gap  # the refresh did not end the gap
    # coarse once no turn is open and DTX_SETTLE_S into the gap: the last three
    # cycles are ~2 messages each (~360 ms of silence, then the refresh and the
    # 1-byte packet), not one per 40 ms
    assert len(sizes) < 30 and sizes[-6:] == [5760, 640] * 3
    clock.now += 0.3
    ts += 12 * 960
    _dtx_stream(dec, codec, enc, [(ts, "speech")])  # speech after a jump ends it
    assert dec._gap_start is None


def test_speech_that_comes_after_its_time_was_filled_is_handed_on_whole_and_paid_back():
    dec, q, clock, filler, codec, enc = _live_decoder()
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(0, "speech")])
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(960, "dtx")])  # caller clock at 40 ms
    clock.now += 0.30  # the next packet is 200 ms late (jitter): 300 ms filled
    dec.fill_live()
    assert dec._pts + dec._pending_n == (40 + 300 - 40) * 16
    clock.now += 0.01
    _dtx_stream(dec, codec, enc, [(960 * 2 + 4800, "speech")])  # was due at caller clock 140 ms
    # all 20 ms of it handed on (speech is never cut), after the silence
    assert dec._pts + dec._pending_n == (300 + 20) * 16
    assert dec._ahead == 160 * 48  # 160 ms ahead of the caller's clock (RTP ticks)
    # the next gap pays it back: 600 ms of caller silence, 440 handed on
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(960 * 3 + 4800, "dtx")])
    _dtx_stream(dec, codec, enc, [(960 * 4 + 4800 + 28800, "speech")])
    assert dec._ahead == 0
    assert dec._pts + dec._pending_n == (300 + 20 + 20 + 600 - 160 + 20) * 16


def test_a_long_dtx_gap_goes_in_coarse_chunks_after_the_end_of_turn_window_and_stops_without_keepalives():
    dec, q, clock, filler, codec, enc = _live_decoder(fine_s=0.5, chunk_s=0.4)
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(0, "speech")])
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(960, "dtx")])
    _drain(q)
    sizes = []
    for _ in range(60):  # 1.2 s without a keep-alive: real-time silence throughout
        clock.now += 0.02
        dec.fill_live()
        sizes += [f.samples for f in _drain(q)]
    # 40 ms chunks until 500 ms into the gap, then 400 ms ones
    assert sizes[:11] == [640] * 11 and 6400 in sizes[11:] and set(sizes) <= {640, 6400, 640 * 2, 320}
    total = sum(sizes) + dec._pending_n
    assert (1200 - 40 - 400) * 16 <= total <= (1200 - 40) * 16
    clock.now += 1.0  # 2.2 s without any packet: not a DTX gap any more
    assert not dec.fill_live()


def test_a_dtx_gap_goes_coarse_once_no_user_turn_is_open_at_stt():
    """The agent talks, the user listens in DTX: stt needs only its clock, not a
    message per 40 ms. While a turn is open (or in the first DTX_SETTLE_S of a
    gap, before a short utterance's SpeechStarted may have come) it is fine."""
    from voxmesh_edge.media import InlineDecoder

    dec, q, clock, filler, codec, enc = _live_decoder(fine_s=2.5, chunk_s=0.4)
    turn_open = [True]
    dec.settled = lambda: not turn_open[0]
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(0, "speech")])
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(960, "dtx")])
    _drain(q)

    def run(seconds):
        sizes = []
        for _ in range(round(seconds / 0.02)):
            clock.now += 0.02
            dec.fill_live()
            sizes += [f.samples for f in _drain(q)]
        return sizes

    assert set(run(0.8)) == {640}  # turn open: 40 ms chunks
    turn_open[0] = False  # stt ended the turn
    coarse = run(0.8)
    assert coarse and set(coarse) <= {6400, 6400 + 320, 6400 - 320, 6080, 6720} and len(coarse) <= 2
    # a fresh gap: fine for the first DTX_SETTLE_S even with no turn open
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [((dec._next_ts + 960 * 3) & 0xFFFFFFFF, "speech")])
    clock.now += 0.02
    _dtx_stream(dec, codec, enc, [(dec._next_ts, "dtx")])
    _drain(q)
    early = run(InlineDecoder.DTX_SETTLE_S - 0.1)
    assert early and set(early) == {640}


async def test_the_process_filler_sweeps_only_decoders_in_a_dtx_gap():
    from voxmesh_edge.media import DtxFiller, InlineDecoder

    filler = DtxFiller.of()
    assert DtxFiller.of() is filler
    swept = []

    class Stub(InlineDecoder):
        """Test double: counts its sweeps, in a gap for two of them."""

        def fill_live(self) -> bool:
            swept.append(self)
            return len(swept) < 2

    stub = Stub(asyncio.Queue())
    filler.add(stub)
    for _ in range(50):
        await asyncio.sleep(0.02)
        if len(filler) == 0:
            break
    assert swept == [stub, stub] and len(filler) == 0 and filler._timer is None


def test_speech_goes_in_longer_chunks_and_the_first_quiet_packet_hands_on_all_that_is_pending():
    """Fewer gRPC messages while the caller talks, none of the delay where the
    end of a turn is decided: the quiet packet after speech flushes at once."""
    from types import SimpleNamespace

    from voxmesh_edge.media import InlineDecoder, _Batch

    q: asyncio.Queue = asyncio.Queue()
    dec = InlineDecoder(q, chunk_frames=2, voiced_chunk_frames=6)
    enc, codec = opus.Encoder(48000, 32000), SimpleNamespace(name="opus")
    n = np.arange(960)
    tone = (8000 * np.sin(2 * np.pi * 440 * n / 48000)).astype(np.int16)
    hiss = (np.random.default_rng(1).standard_normal(960) * 10).astype(np.int16)  # ~-70 dBFS
    ts = 0

    def send(pcm, count):
        nonlocal ts
        sizes = []
        for _ in range(count):
            dec.put((codec, _Batch(ts, [(ts, enc.encode(pcm))])))
            ts += 960
            sizes += [f.samples for f in _drain(q)]
        return sizes

    assert send(hiss, 10) == [640] * 5  # quiet: 40 ms chunks
    voiced = send(tone, 14)
    assert voiced and set(voiced[1:]) == {1920}  # talking: 120 ms chunks (after the encoder's attack)
    pending = dec._pending_n
    quiet = send(np.zeros(960, np.int16), 8)
    # the first quiet packet (or the next: the codec's decay) flushes all of it
    assert quiet[0] in (pending + 320, pending + 640) and set(quiet[1:]) == {640}
    # a steady loud noise stops counting as speech within the floor's memory:
    # 40 ms chunks again
    noise = (np.random.default_rng(2).standard_normal(960) * 600).astype(np.int16)  # ~-35 dBFS
    sizes = send(noise, 100)
    assert 1920 in sizes and sizes[-10:] == [640] * 10


def test_40_ms_packets_and_chunks_decode_to_640_samples():
    from types import SimpleNamespace

    from voxmesh_edge.media import InlineDecoder, _Batch

    q: asyncio.Queue = asyncio.Queue()
    dec = InlineDecoder(q, chunk_frames=2)
    enc = opus.Encoder(48000, 32000)
    codec = SimpleNamespace(name="opus")
    tone = (6000 * np.sin(2 * np.pi * 440 * np.arange(1920 * 5) / 48000)).astype(np.int16)
    for i in range(5):  # 40 ms packets: one chunk each
        dec.put((codec, _Batch(i * 1920, [(i * 1920, enc.encode(tone[i * 1920 : (i + 1) * 1920]))])))
    for i in range(4):  # 20 ms packets: a chunk every second one; a lost one is concealed
        ts = 5 * 1920 + i * 960
        dec.put((codec, _Batch(ts, [None if i == 2 else (ts, enc.encode(tone[i * 960 : (i + 1) * 960]))])))
    frames = [q.get_nowait() for _ in range(q.qsize())]
    assert [f.samples for f in frames] == [640] * 7
    assert [f.pts for f in frames] == [640 * i for i in range(7)]


def test_a_sink_takes_the_chunks_and_the_track_queue_only_its_end():
    from types import SimpleNamespace

    from voxmesh_edge.media import InlineDecoder, _Batch

    q: asyncio.Queue = asyncio.Queue()
    got: list[np.ndarray] = []
    dec = InlineDecoder(q, chunk_frames=2, sink=got.append)
    enc = opus.Encoder(48000, 32000)
    codec = SimpleNamespace(name="opus")
    for i in range(6):
        dec.put((codec, _Batch(i * 960, [(i * 960, enc.encode(tone(20)))])))
    assert [c.size for c in got] == [640] * 3 and q.empty()
    dec.put(None)
    assert q.get_nowait() is None and q.empty()


async def test_40_ms_playout_packets_carry_queued_audio_ahead_and_silence_in_20_ms_frames():
    taken: list[int] = []
    playout = Playout(lambda *a: None, lambda t: None)
    playout.on_output = lambda pcm: taken.append(pcm.size)
    track = PacedOpusTrack(playout, ptime_ms=40)
    assert track.use_opus()
    t = np.arange(48000 // 10)  # 100 ms of tone, then silence
    playout.enqueue(Segment("a1", 0, (8000 * np.sin(2 * np.pi * 300 * t / 48000)).astype(np.int16), (0, 5), [], "hello", True))
    dec = opus.Decoder(48000)
    packets, sent_at = [], []
    for _ in range(10):
        packets.append(await track.recv())
        sent_at.append(track._tick)  # the tick (of its lane) it was sent for: the grid, not a late wake-up
    # 100 ms: two packets of 40 ms, then 20 ms (nothing queued beyond it), then
    # the encoder's decay and cached silence, 20 ms each
    sizes = [dec.decode(bytes(p)).size for p in packets]
    assert sizes == [1920, 1920] + [960] * 8
    assert [p.pts for p in packets] == [0, 1920, 3840] + [3840 + 960 * i for i in range(1, 8)]
    # each packet leaves when its FIRST frame is due: no delay added, the
    # second frame goes out 20 ms ahead of its time
    first = sent_at[0]
    assert [k - first for k in sent_at] == [p.pts // 960 for p in packets]
    assert len(bytes(packets[0])) > 20  # speech
    assert bytes(packets[-1]) == track._silence and len(track._silence) <= 8  # cached silence
    assert sum(taken) == 960 * 12  # ticks 0-11: the playout gave every frame once
    track.stop()


async def test_a_40_ms_packetizer_does_not_take_audio_that_is_not_queued_yet():
    playout = Playout(lambda *a: None, lambda t: None)
    track = PacedOpusTrack(playout, ptime_ms=40)
    assert track.use_opus()
    playout.enqueue(Segment("a1", 0, tone(30), (0, 5), [], "hi", False))  # 30 ms: one frame and a half
    p = await track.recv()
    assert opus.Decoder(48000).decode(bytes(p)).size == 960  # the half frame is not padded ahead of time
    playout.enqueue(Segment("a1", 1, tone(50), (0, 5), [], "there", True))  # the next chunk, in time
    p = await track.recv()
    assert p.pts == 960 and len(bytes(p)) > 20
    playout.pause()  # a barge-in: nothing more is taken ahead
    assert not playout.holds(1)
    track.stop()


def tone(ms: int, hz: float = 300.0) -> np.ndarray:
    t = np.arange(48 * ms)
    return (8000 * np.sin(2 * np.pi * hz * t / 48000)).astype(np.int16)


async def test_dtx_sends_one_packet_per_interval_while_the_agent_is_silent():
    played: list[np.ndarray] = []
    playout = Playout(lambda *a: None, lambda t: None)
    playout.on_output = played.append
    track = PacedOpusTrack(playout, dtx=True, dtx_interval_ms=100)  # a DTX packet every 5 ticks
    assert track.use_opus()
    playout.enqueue(Segment("a1", 0, tone(100), (0, 5), [], "hello", True))  # 5 ticks of speech
    out = []
    for _ in range(5 + 5 + 3):
        p = await track.recv()
        out.append((p.pts // 960, len(bytes(p)), track.talkspurt_start))
    ticks = [k for k, _, _ in out]
    # speech 0-4, the encoder's decay 5-9, DTX at 10, then every 5th tick: the
    # ticks in between send nothing, but the RTP clock (pts) runs on
    assert ticks == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20]
    assert [n for _, n, _ in out[10:]] == [1, 1, 1]  # the TOC byte alone
    assert [k for k, _, start in out if start] == [0]
    # The playout (and the echo guard listening to it) still ran every tick.
    assert len(played) == 21
    # The agent speaks again: sent at once, on the grid, opening a talkspurt.
    playout.enqueue(Segment("a2", 0, tone(40), (0, 5), [], "again", True))
    p = await track.recv()
    assert p.pts // 960 == 21 and track.talkspurt_start and len(bytes(p)) > 20
    p = await track.recv()
    assert p.pts // 960 == 22 and not track.talkspurt_start
    # A decoder plays the DTX packet as 20 ms of (near) silence.
    dec = opus.Decoder(48000)
    dec.decode(track._silence)
    pcm = dec.decode(track._dtx_packet)
    assert pcm.size == 960 and np.abs(pcm).max() < 50
    track.stop()


def test_dtx_packets_are_20_ms_with_40_ms_audio_packets_and_codes_that_need_more_bytes():
    playout = Playout(lambda *a: None, lambda t: None)
    track = PacedOpusTrack(playout, ptime_ms=40, dtx=True)
    assert track.use_opus()
    assert len(track._dtx_packet) == 1
    assert opus.Decoder(48000).decode(track._dtx_packet).size == 960  # one empty 20 ms frame
    assert dtx_packet(bytes([0b11111011, 2])) is None  # code 3: a frame count byte is needed
    assert dtx_packet(b"") is None


async def test_dtx_on_a_real_call_keeps_sequence_numbers_and_marks_talkspurts():
    """aiortc as the receiving client: across DTX gaps the sequence numbers stay
    contiguous (no loss), RTP timestamps jump by the silence skipped, the marker
    bit opens each talkspurt, and both of the agent's sentences play."""
    playout = Playout(lambda *a: None, lambda t: None)
    track = PacedOpusTrack(playout, dtx=True, dtx_interval_ms=200)
    caller, edge, transceiver = await offer_to_edge(track)
    assert accelerate(transceiver, track)["sender"]
    assert isinstance(transceiver.sender, FastSender)
    (theirs,) = caller.getTransceivers()
    rtp: list[tuple[int, int, int, int]] = []
    handle = theirs.receiver._handle_rtp_packet

    async def spy(packet, arrival_time_ms):
        rtp.append((packet.sequence_number, packet.timestamp, packet.marker, len(packet.payload)))
        await handle(packet, arrival_time_ms)

    theirs.receiver._handle_rtp_packet = spy
    heard: list = []
    tasks = []

    async def read(t) -> None:
        while True:
            try:
                heard.append(await t.recv())
            except MediaStreamError:
                return

    caller.on("track", lambda t: tasks.append(asyncio.ensure_future(read(t))))
    await answer_and_connect(caller, edge)
    playout.enqueue(Segment("a1", 0, tone(300), (0, 5), [], "hello", True))
    await asyncio.sleep(1.5)
    playout.enqueue(Segment("a2", 0, tone(300, 500), (0, 5), [], "again", True))
    await asyncio.sleep(1.0)
    # A replaced track (the edge never does it) goes on, encoded by aiortc,
    # with the sequence numbers running on (SRTP would drop a restart).
    before = len(rtp)
    transceiver.sender.replaceTrack(Tone())
    await asyncio.sleep(0.5)
    assert len(rtp) - before >= 15 and track.readyState == "live"
    assert all((b[0] - a[0]) % 65536 == 1 for a, b in zip(rtp[before - 1 :], rtp[before:]))
    del rtp[before:]
    for pc in (caller, edge):
        await pc.close()
    for task in tasks:
        task.cancel()
    assert len(rtp) > 40
    seqs = [s for s, _, _, _ in rtp]
    assert all((b - a) % 65536 == 1 for a, b in zip(seqs, seqs[1:]))
    steps = [(b[1] - a[1]) % 2**32 for a, b in zip(rtp, rtp[1:])]
    assert set(steps) <= {960 * k for k in range(1, 11)} and 960 * 10 in steps  # 200 ms DTX gaps
    # ~2.5 s on the wire, but far fewer packets than 125: silence is mostly not sent
    assert len(rtp) < 90
    # marker: the first packet, and speech after DTX; never a DTX packet
    for i, (_, _, marker, size) in enumerate(rtp):
        opens = size > 2 and (i == 0 or rtp[i - 1][3] <= 2 or steps[i - 1] > 960)
        assert marker == int(opens), (i, rtp[max(0, i - 3) : i + 2])
    assert sum(m for _, _, m, _ in rtp) >= 2
    # aiortc's receiver played both sentences (and the DTX packets as silence)
    levels = [float(np.sqrt(np.mean(f.to_ndarray().astype(np.float32) ** 2))) for f in heard]
    loud = [i for i, v in enumerate(levels) if v > 2000]
    assert loud and any(b - a > 1 for a, b in zip(loud, loud[1:]))  # two separate bursts
    assert min(levels) < 50


def test_decoded_chunks_reach_the_session_as_numpy_without_an_av_frame():
    from types import SimpleNamespace

    from voxmesh_edge.audio import frame_to_mono
    from voxmesh_edge.media import InlineDecoder, PcmFrame, _Batch

    q: asyncio.Queue = asyncio.Queue()
    dec = InlineDecoder(q, chunk_frames=2)
    enc = opus.Encoder(48000, 32000)
    for i in range(2):
        dec.put((SimpleNamespace(name="opus"), _Batch(i * 960, [(i * 960, enc.encode(tone(20)))])))
    frame = q.get_nowait()
    assert isinstance(frame, PcmFrame)
    assert (frame.samples, frame.sample_rate, frame.pts, frame.layout.name) == (640, 16000, 0, "mono")
    assert frame_to_mono(frame) is frame.pcm and frame.pcm.dtype == np.int16
    assert frame.to_ndarray().shape == (1, 640)


def test_an_idle_playout_tick_is_the_shared_silence_and_the_echo_guard_records_it():
    from voxmesh_edge.audio import SILENCE
    from voxmesh_edge.echo import EchoGuard

    playout = Playout(lambda *a: None, lambda t: None)
    assert playout.next_frame() is SILENCE and not SILENCE.flags.writeable
    fast, slow = EchoGuard(), EchoGuard()
    speech = tone(40)
    for guard, silence in ((fast, SILENCE), (slow, np.zeros(960, np.int16))):
        for _ in range(90):  # wraps the 2 s ring
            guard.played(speech[:960])
            guard.played(silence)
    assert np.array_equal(fast._ref, slow._ref) and fast._pos == slow._pos
    assert fast._audible_ticks == slow._audible_ticks


class EchoLog:
    """What the playout hands the echo guard, in order: each packet's frames
    (on_output) and skipped silent ticks in one call (on_silence)."""

    def __init__(self, playout: Playout):
        from voxmesh_edge.echo import EchoGuard

        self.guard = EchoGuard()
        self.events: list = []
        playout.on_output = self.output
        playout.on_silence = self.silence

    def output(self, pcm):
        self.events.append(pcm.copy())
        self.guard.played(pcm)

    def silence(self, frames: int):
        self.events.append(frames)
        self.guard.silence(frames)

    def frames(self) -> int:
        return sum(e if isinstance(e, int) else e.size // 960 for e in self.events)

    def fed_every_tick(self):
        """A guard given the same output with a write every tick, as before."""
        from voxmesh_edge.echo import EchoGuard

        slow = EchoGuard()
        for e in self.events:
            for _ in range(e if isinstance(e, int) else 0):
                slow.played(np.zeros(960, np.int16))
            for k in range(0 if isinstance(e, int) else e.size // 960):
                slow.played(e[k * 960 : (k + 1) * 960])  # a packet of several frames, a frame at a time
        return slow


@pytest.mark.parametrize("ptime_ms", [20, 40])
async def test_an_idle_track_wakes_for_keepalives_only(ptime_ms):
    playout = Playout(lambda *a: None, lambda t: None)
    log = EchoLog(playout)
    track = PacedOpusTrack(playout, ptime_ms=ptime_ms, dtx=True, dtx_interval_ms=200)
    assert track.use_opus()
    log.guard.sync = track.catch_up
    every = 10  # ticks from one keep-alive to the next
    playout.enqueue(Segment("a1", 0, tone(100), (0, 5), [], "hello", True))
    sent = [await track.recv()]
    while len(bytes(sent[-1])) > 1:  # speech, the encoder's decay, the first DTX packet
        sent.append(await track.recv())
    d = sent[-1].pts // 960  # its tick
    speech = [0, 1, 2, 3, 4] if ptime_ms == 20 else [0, 2, 4]  # 100 ms of tone: 40 + 40 + 20 ms
    assert [p.pts // 960 for p in sent] == speech + [5, 6, 7, 8, 9, 10] and d == 10  # then 5 of decay
    ticker, base = track._ticker, track._tick - d
    sleeping = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.06)
    # The track waits on one tick only, the keep-alive's, not on the next ones.
    assert not sleeping.done()
    assert [k for k, futs in ticker._waiters.items() if track._wake in futs] == [base + d + every]
    p = await sleeping
    assert p.pts == (d + every) * 960 and len(bytes(p)) == 1
    # The ticks in between reached the echo guard in one call, as silence.
    assert log.events[-2] == every - 1
    assert not log.events[-1].any()
    assert log.frames() == d + every + 1
    slow = log.fed_every_tick()
    assert np.array_equal(log.guard._ref, slow._ref) and log.guard._pos == slow._pos
    assert log.guard._audible_ticks == slow._audible_ticks
    track.stop()


async def test_audio_queued_in_a_dtx_gap_goes_out_on_the_next_tick_with_its_rtp_timestamp():
    playout = Playout(lambda *a: None, lambda t: None)
    log = EchoLog(playout)
    # keep-alive every 100 ticks: far past the audio below, even on a stalled loop
    track = PacedOpusTrack(playout, dtx=True, dtx_interval_ms=2000)
    assert track.use_opus()
    log.guard.sync = track.catch_up
    playout.enqueue(Segment("a1", 0, tone(100), (0, 5), [], "hello", True))
    for _ in range(11):
        await track.recv()
    ticker, base = track._ticker, track._tick - 10
    sleeping = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.13)  # ~6 ticks into the gap, well before the keep-alive (tick 110)
    k1 = ticker.next_tick()
    playout.enqueue(Segment("a2", 0, tone(60, 500), (0, 5), [], "again", True))
    k2 = ticker.next_tick()
    p = await sleeping
    # The first tick not yet due when the audio came: its RTP timestamp counts
    # every tick of the gap, and it opens a talkspurt.
    assert k1 - base <= p.pts // 960 <= k2 - base < 110
    assert p.pts // 960 > 13 and track.talkspurt_start and len(bytes(p)) > 20
    assert log.frames() == p.pts // 960 + 1
    slow = log.fed_every_tick()
    assert np.array_equal(log.guard._ref, slow._ref) and log.guard._pos == slow._pos
    q = await track.recv()
    assert q.pts == p.pts + 960 and not track.talkspurt_start
    track.stop()


async def test_the_echo_guard_is_brought_up_to_date_while_the_track_sleeps():
    playout = Playout(lambda *a: None, lambda t: None)
    log = EchoLog(playout)
    track = PacedOpusTrack(playout, dtx=True, dtx_interval_ms=10000)
    assert track.use_opus()
    guard = log.guard
    guard.sync = track.catch_up
    playout.enqueue(Segment("a1", 0, tone(100), (0, 5), [], "hello", True))
    for _ in range(11):
        await track.recv()
    base = track._tick - 10
    sleeping = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.05)
    assert guard.recently_audible()  # the tone is within the last 0.6 s
    await asyncio.sleep(0.7)
    # 0.7 s of the gap later the tone is out of the guard's window, though
    # the track has not woken up: the check accounted the ticks due.
    k1 = track._ticker.next_tick()
    assert not guard.recently_audible()
    k2 = track._ticker.next_tick()
    assert k1 - base <= log.frames() <= k2 - base
    assert guard._pos == log.frames() * 320 % guard._buf.size
    assert not sleeping.done()
    track.stop()  # ends the sleeping recv() now, not at the keep-alive 10 s away
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(sleeping, 2.0)


def _samples(collector) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in collector.collect() for s in fam.samples
            if not s.name.endswith("_created")}


def test_playout_metrics_are_published_per_tick_with_the_histograms_own_buckets():
    from prometheus_client import CollectorRegistry, Histogram

    from voxmesh.core.metrics import CATALOG, metric
    from voxmesh_edge.media import PlayoutStats

    stats = PlayoutStats.get()
    stats.publish()
    assert not stats._direct  # this prometheus_client's layout is the batched one
    names = ("voxmesh_frame_lateness_seconds", "voxmesh_playout_late_frames_total", "voxmesh_playout_frames_total")
    before = {n: _samples(metric(n)) for n in names}
    ref = Histogram("ref_lateness_seconds", "", buckets=CATALOG[names[0]].buckets, registry=CollectorRegistry())
    # bounds themselves (le is inclusive), between them, negative (a timer a
    # hair early), beyond the last bound
    values = [0.0, -0.0003, 0.0005, 0.0007, 0.001, 0.0199, 0.02, 0.021, 0.16, 0.5, 0.003] * 3
    for v in values:
        stats.sent(v)
        ref.observe(max(0.0, v))
    stats.frames(True, 4)
    stats.frames(False, 7)
    assert _samples(metric(names[0])) == before[names[0]]  # nothing published before the tick
    stats.publish()
    after = {n: _samples(metric(n)) for n in names}
    delta = {k[0].replace("voxmesh_frame_lateness_seconds", "ref_lateness_seconds"): v - before[names[0]].get(k, 0.0)
             for k, v in after[names[0]].items()}
    expect = {k[0]: v for k, v in _samples(ref).items()}
    bucket_keys = [k for k in after[names[0]] if k[0].endswith("_bucket")]
    assert len(bucket_keys) == len(CATALOG[names[0]].buckets) + 1
    for k in bucket_keys:  # cumulative counts per le, as observe() would leave them
        le = dict(k[1])["le"]
        ref_v = next(s.value for fam in ref.collect() for s in fam.samples if s.name.endswith("_bucket") and s.labels["le"] == le)
        assert after[names[0]][k] - before[names[0]].get(k, 0.0) == ref_v, le
    assert delta["ref_lateness_seconds_count"] == expect["ref_lateness_seconds_count"] == len(values)
    assert abs(delta["ref_lateness_seconds_sum"] - expect["ref_lateness_seconds_sum"]) < 1e-9
    late = after[names[1]][("voxmesh_playout_late_frames_total", ())] - before[names[1]].get(("voxmesh_playout_late_frames_total", ()), 0.0)
    assert late == 3 * 3  # 0.021, 0.16, 0.5: more than a frame late

    def frames(kind, d):
        return d.get(("voxmesh_playout_frames_total", (("kind", kind),)), 0.0)

    assert frames("audio", after[names[2]]) - frames("audio", before[names[2]]) == 4
    assert frames("silence", after[names[2]]) - frames("silence", before[names[2]]) == 7


@pytest.mark.parametrize("csrc,padding", [([], 0), ([7, 8], 0), ([], 5), ([9], 3)])
def test_the_fast_rtp_header_reads_what_aiortc_reads(csrc, padding):
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket

    from voxmesh_edge.media import RtpHeader

    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
    for with_extensions in (False, True):
        packet = RtpPacket(payload_type=111, marker=1, sequence_number=65000, timestamp=4000000000, ssrc=0xDEADBEEF,
                           payload=bytes(range(40)))
        packet.csrc, packet.padding_size = csrc, padding
        if with_extensions:
            packet.extensions.mid, packet.extensions.abs_send_time = "0", 12345
        data = packet.serialize(extensions)
        ours, theirs = RtpHeader(data), RtpPacket.parse(data, extensions)
        assert (ours.payload_type, ours.sequence_number, ours.timestamp, ours.ssrc, ours.payload) == \
            (theirs.payload_type, theirs.sequence_number, theirs.timestamp, theirs.ssrc, theirs.payload)
    for bad in (data[:11], bytes([0x40]) + data[1:], bytes([0x90]) + data[1:12] + b"\x00\x01"):
        with pytest.raises(ValueError):
            RtpHeader(bad)


async def test_rtcp_reports_go_both_ways_at_the_audio_interval(monkeypatch):
    """The fast sender and receiver send aiortc's reports (SR with the packet
    counts, RR with the caller's stream statistics) on their own interval
    (RTCP_INTERVAL_S, 5 s like a browser's audio; short here), and stop cleanly."""
    from aiortc.rtp import RtcpRrPacket, RtcpSrPacket

    from voxmesh_edge import media

    monkeypatch.setattr(media, "RTCP_INTERVAL_S", 0.1)
    playout = Playout(lambda *a: None, lambda t: None)
    track = PacedOpusTrack(playout)
    caller, edge, transceiver = await offer_to_edge(track)
    assert accelerate(transceiver, track)["sender"]
    (theirs,) = caller.getTransceivers()
    got: list = []
    for side in (theirs.sender, theirs.receiver):
        handle = side._handle_rtcp_packet

        async def spy(packet, handle=handle):
            got.append(packet)
            await handle(packet)

        side._handle_rtcp_packet = spy
    await answer_and_connect(caller, edge)
    playout.enqueue(Segment("a1", 0, tone(600), (0, 5), [], "hello", True))
    await asyncio.sleep(1.2)
    srs = [p for p in got if isinstance(p, RtcpSrPacket) and p.ssrc == transceiver.sender._ssrc]
    rrs = [p for p in got if isinstance(p, RtcpRrPacket)]
    assert len(srs) >= 4 and srs[-1].sender_info.packet_count > 10  # every ~0.1 s, counting what was sent
    assert len(rrs) >= 4 and rrs[-1].reports[0].ssrc == theirs.sender._ssrc
    assert rrs[-1].reports[0].highest_sequence > 0 and rrs[-1].reports[0].packets_lost == 0
    for pc in (caller, edge):
        await pc.close()  # waits for both RTCP loops to say they exited
