"""ICE host candidates bound inside VOXMESH_EDGE_ICE_PORT_MIN/_MAX, and a real
connection over them (aiortc on both ends, loopback)."""

from __future__ import annotations

import asyncio
import re
import socket

from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from voxmesh.core.webrtc import configure_ice_hosts, configure_ice_port_range


def candidate_ports(sdp: str) -> list[int]:
    # BUNDLE: every m-section repeats the one transport's candidates.
    return sorted({int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host", sdp)})


async def connect_pair() -> tuple[RTCPeerConnection, RTCPeerConnection, str]:
    caller, callee = RTCPeerConnection(), RTCPeerConnection()
    caller.addTrack(AudioStreamTrack())
    caller.createDataChannel("events")
    await caller.setLocalDescription(await caller.createOffer())
    await callee.setRemoteDescription(caller.localDescription)
    callee.addTrack(AudioStreamTrack())
    await callee.setLocalDescription(await callee.createAnswer())
    await caller.setRemoteDescription(callee.localDescription)
    for _ in range(100):
        if caller.connectionState == callee.connectionState == "connected":
            break
        await asyncio.sleep(0.1)
    return caller, callee, callee.localDescription.sdp


async def test_host_candidates_use_the_port_range_and_skip_ports_in_use():
    configure_ice_hosts(("127.0.0.1",))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    lo, hi = base, base + 12
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", lo))  # taken: the range must skip it
    try:
        configure_ice_port_range(lo, hi)
        pcs = []
        ports: list[int] = []
        answerer: list[int] = []
        for _ in range(3):
            caller, callee, sdp = await connect_pair()
            pcs += [caller, callee]
            assert caller.connectionState == "connected" == callee.connectionState
            ports += candidate_ports(caller.localDescription.sdp) + candidate_ports(sdp)
            answerer += candidate_ports(sdp)
        assert ports and all(lo < p <= hi for p in ports), ports
        # The edge answers: one port per session (BUNDLE), none shared.
        assert len(answerer) == len(set(answerer)) == 3
        for pc in pcs:
            await pc.close()
    finally:
        configure_ice_port_range(0, 0)
        blocker.close()
    # Back to ephemeral ports.
    caller, callee, sdp = await connect_pair()
    assert caller.connectionState == "connected"
    assert not all(lo <= p <= hi for p in candidate_ports(sdp))
    await caller.close()
    await callee.close()
