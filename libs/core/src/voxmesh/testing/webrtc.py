"""WebRTC peers for tests: an aiortc client offer on loopback, and headless
Chromium with a fake microphone fed from a WAV file."""

from __future__ import annotations

import os
import pathlib
import shutil


async def client_offer():
    """(RTCPeerConnection, offer SDP) of a caller with a silent microphone and
    the events data channel, on 127.0.0.1 (the machine's other interface must
    not be relied on)."""
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack

    from voxmesh.core.webrtc import configure_ice_hosts

    configure_ice_hosts(("127.0.0.1",))
    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def chromium(wav: str | pathlib.Path, profile_dir: str | pathlib.Path):
    """Headless Chromium (Debian's, driven by its chromedriver: nothing is
    downloaded) whose microphone plays `wav` once. The WAV must be 16-bit PCM
    with ~1 s of leading silence (capture starts a little late)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        raise RuntimeError("chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    os.environ["SE_OFFLINE"] = "true"  # never let selenium try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop", "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile_dir}",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
