"""The edge capacity benchmark's turn-taking callers (bench/edge_capacity):
what they put on the wire in a silence (Opus DTX as libwebrtc sends it), and
the benchmark's placing of markers on the caller's clock across DTX gaps."""

from __future__ import annotations

import asyncio
import importlib.util
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "edge_capacity"


def _load(name: str):
    # The bench's modules import each other by plain name ("doubles", "clients"),
    # which other test folders use too: a suite-wide run may already hold another
    # "doubles" in sys.modules. Load ours with the names free, then put theirs back.
    plain = [p.stem for p in BENCH.glob("*.py")]
    shadowed = {m: sys.modules.pop(m) for m in plain if m in sys.modules}
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"edge_capacity_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))
        for m in plain:
            sys.modules.pop(m, None)
        sys.modules.update(shadowed)


clients = _load("clients")


def test_schedule_sends_one_dtx_packet_at_silence_start_then_every_400_ms():
    s = clients.TalkSchedule(talk=4, silent=46, offset=0)
    got, n = [], 0
    while len(got) < 13:
        m, kind = s.next_packet(n)
        got.append((m, kind))
        n = m + 2  # 40 ms packets
    assert got == [
        (0, "speech"), (2, "speech"),
        (4, "dtx"), (24, "dtx"), (44, "dtx"),  # silence 4..49: at its start, then every 20 frames
        (50, "speech"), (52, "speech"),
        (54, "dtx"), (74, "dtx"), (94, "dtx"),
        (100, "speech"), (102, "speech"), (104, "dtx"),
    ]


def test_schedule_from_the_middle_of_a_silence_and_without_dtx():
    # offset 10: frame 0 is 6 frames into the silence that began at frame -6,
    # so the next packet is that silence's next DTX packet, at -6 + 20.
    assert clients.TalkSchedule(talk=4, silent=46, offset=10).next_packet(0) == (14, "dtx")
    # No usedtx in the answer: a silence packet every period.
    plain = clients.TalkSchedule(talk=4, silent=46, offset=10, dtx=False)
    assert [plain.next_packet(n) for n in (0, 2, 40)] == [(0, "silence"), (2, "silence"), (40, "speech")]
    with pytest.raises(ValueError):
        clients.TalkSchedule(talk=3, silent=46)  # 40 ms packets would straddle the boundary


def test_mic_puts_dtx_on_the_wire_with_rtp_timestamps_running_on():
    from aiortc.codecs.opus import OpusEncoder

    now = [100.0]
    sleeps = []

    async def fake_sleep(dt):
        sleeps.append(dt)
        now[0] += dt

    speech = {1: [bytes([0x78, i]) for i in range(100)], 2: [bytes([0x79, i]) for i in range(50)]}
    silence = {1: clients.encode_silence(1), 2: clients.encode_silence(2)}
    mic = clients.LoopMic(speech, marker_every=10, phase=0,
                          schedule=clients.TalkSchedule(talk=4, silent=46), silence=silence)
    mic.per = 2
    mic.clock, mic.sleep = (lambda: now[0]), fake_sleep

    async def take(k):
        return [await mic.recv() for _ in range(k)]

    packets = asyncio.run(take(8))
    enc = OpusEncoder()
    stamps = [enc.pack(p)[1] for p in packets]  # what aiortc's sender puts in the RTP header
    assert stamps == [n * 960 for n in (0, 2, 4, 24, 44, 50, 52, 54)]
    payloads = [bytes(p) for p in packets]
    toc = silence[2][0][:1]
    assert len(toc) == 1 and silence[2][1] == toc
    assert payloads[2:5] == [toc] * 3 and payloads[7] == toc  # the TOC byte alone
    assert payloads[0] == speech[2][0] and payloads[5] == speech[2][25]  # the loop ran on through the silence
    # Each packet left when its last frame was complete, nothing in the gaps.
    assert now[0] == pytest.approx(100.0 + (54 + 1) * 0.02)
    assert mic.sent == {"speech": 4, "dtx": 4, "silence": 0}
    # Markers only where the caller spoke: frames 0 and 50, not 10..40.
    assert [f for f, _ in mic.marker_times] == [0, 50]


def test_markers_are_placed_on_the_callers_clock_across_dtx_gaps():
    bench = _load("edge_capacity_bench")

    class Stream:
        def __init__(self, markers):
            self.markers = markers

    class Stt:
        streams = {}

    # Markers sent at frames 0, 100 and 400 (the ones between fell in silences);
    # stt got them at sample offsets 5000 + 320 per frame, except that 7 frames
    # (2240 samples) of audio went missing between the 2nd and the 3rd.
    sent = [(0, 10.0), (100, 12.0), (400, 18.0)]
    got = [(10.005, 5000), (12.006, 5000 + 32000), (18.010, 5000 + 128000 - 2240)]
    Stt.streams = {"s1": Stream(got)}
    results = [{"session_id": "s1", "marker_times": sent, "arrivals": [], "frames_sent": 1000, "packets_lost": 0,
                "state": "connected"}]
    row = bench.analyse(1, results, Stt, {}, {}, 1.0, 9.0, 19.0)
    assert row["markers"] == 3
    assert row["inbound_frames_lost"] == 7
    assert row["recv_delay_p99_ms"] == pytest.approx(10.0, abs=0.2)


def test_webrtc_style_silence_is_what_libopus_and_libwebrtc_send():
    # 20 ms packets: 200 ms of coded silence (libopus' hangover), a TOC-only
    # packet, then a coded refresh frame every 21 packets (libopus counts from
    # 200 ms again after 600 ms), each followed by a TOC-only packet (libwebrtc
    # sends a <= 2-byte packet only after a bigger one); nothing else.
    kinds = clients.webrtc_silence(100, 1)
    sent = [(j, k) for j, k in enumerate(kinds) if k is not None]
    assert sent == [(j, "silence") for j in range(10)] + [
        (10, "dtx"), (30, "silence"), (31, "dtx"), (51, "silence"), (52, "dtx"), (72, "silence"), (73, "dtx"),
        (93, "silence"), (94, "dtx")]
    s = clients.TalkSchedule(talk=4, silent=100, style="webrtc", per=2)
    got, n = [], 0
    while n < 104:
        m, kind = s.next_packet(n)
        got.append((m, kind))
        n = m + 2
    assert got[:2] == [(0, "speech"), (2, "speech")]
    assert got[2:7] == [(4 + 2 * j, "silence") for j in range(5)]  # 5 x 40 ms of hangover
    assert got[7:] == [(14, "dtx"), (34, "silence"), (36, "dtx"), (56, "silence"), (58, "dtx"),
                       (78, "silence"), (80, "dtx"), (100, "silence"), (102, "dtx")]


def test_callers_follow_maxplaybackrate_as_chromium_does():
    assert clients.wants_wideband("a=rtpmap:111 opus/48000/2\r\na=fmtp:111 usedtx=1;maxplaybackrate=16000\r\n")
    assert not clients.wants_wideband("a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n")
    assert not clients.wants_wideband("a=fmtp:111 maxplaybackrate=48000\r\n")
    silence, dtx = clients.encode_silence(2, wideband=True)
    assert silence[0] >> 3 == 10 and dtx == silence[:1]  # TOC config 10: SILK wideband, 40 ms
