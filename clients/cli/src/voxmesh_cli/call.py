"""`voxmesh call FILE.wav`: talk to the agent over real WebRTC, as a browser
would. The file is the microphone, played in real time; the agent's audio is
recorded; transcripts come over the data channel.

ttfa_ms is measured at this client: from the moment the file's last speech
sample was played into the connection to the first non-silent agent audio
received, so it includes the network, jitter buffers and decoding.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import pathlib
import tempfile
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import soxr
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from voxmesh.core.webrtc import configure_ice_hosts

RATE = 48000
FRAME = 960  # 20 ms
SILENCE_DBFS = -45.0


def load_wav_48k(path: str | pathlib.Path) -> np.ndarray:
    import wave

    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: need 16-bit PCM WAV")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
        rate = w.getframerate()
    if rate != RATE:
        data = soxr.resample(data, rate, RATE).astype(np.int16)
    return data


def speech_bounds(pcm: np.ndarray, rate: int = RATE) -> tuple[float, float] | None:
    """(first, last) second of speech: 20 ms windows above -40 dBFS."""
    win = rate // 50
    n = pcm.size // win
    if n == 0:
        return None
    frames = pcm[: n * win].astype(np.float32).reshape(n, win)
    db = 20 * np.log10(np.maximum(np.sqrt((frames**2).mean(axis=1)), 1e-3) / 32768)
    loud = np.nonzero(db > -40)[0]
    if loud.size == 0:
        return None
    return loud[0] * win / rate, (loud[-1] + 1) * win / rate


def dbfs(pcm: np.ndarray) -> float:
    if pcm.size == 0:
        return -120.0
    return float(20 * np.log10(max(np.sqrt(np.mean(pcm.astype(np.float32) ** 2)), 1e-3) / 32768))


class FileMicrophone(MediaStreamTrack):
    """Plays PCM in real time as a microphone, then silence; more audio can be
    mixed in later (a barge-in)."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__()
        self.pcm = pcm
        self.t0: float | None = None
        self._n = 0
        self._extra: list[tuple[int, np.ndarray]] = []  # (start sample, pcm)

    def schedule(self, pcm: np.ndarray, at_monotonic: float) -> float:
        """Mix `pcm` in starting at the frame for `at_monotonic`; returns the
        monotonic time its first sample will be played."""
        assert self.t0 is not None
        start = max(self._n * FRAME, int((at_monotonic - self.t0) * RATE))
        start = -(-start // FRAME) * FRAME
        self._extra.append((start, pcm))
        return self.t0 + start / RATE

    @property
    def played_s(self) -> float:
        return self._n * FRAME / RATE

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.t0 is None:
            self.t0 = time.monotonic()
        wait = self.t0 + self._n * FRAME / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        a = self._n * FRAME
        out = np.zeros(FRAME, np.int32)
        piece = self.pcm[a : a + FRAME]
        out[: piece.size] += piece
        for start, pcm in self._extra:
            lo = a - start
            if 0 <= lo + FRAME and lo < pcm.size:
                seg = pcm[max(0, lo) : lo + FRAME]
                off = max(0, -lo)
                out[off : off + seg.size] += seg
        frame = AudioFrame.from_ndarray(np.clip(out, -32768, 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = a
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += 1
        return frame


@dataclass
class Recorder:
    chunks: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival monotonic, 48k mono)

    async def run(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            data = frame.to_ndarray()
            ch = len(frame.layout.channels)
            mono = data.reshape(-1, ch).mean(axis=1).astype(np.int16) if not frame.format.is_planar else data[0].astype(np.int16)
            if frame.sample_rate != RATE:
                mono = soxr.resample(mono, frame.sample_rate, RATE).astype(np.int16)
            self.chunks.append((time.monotonic(), mono))

    def first_audible_after(self, t: float) -> float | None:
        for ts, pcm in self.chunks:
            if ts >= t and dbfs(pcm) > SILENCE_DBFS:
                return ts
        return None

    def silent_from(self, t: float, hold_s: float = 0.3) -> float | None:
        """First arrival >= t after which the audio stays silent for hold_s."""
        start = None
        for ts, pcm in self.chunks:
            if ts < t:
                continue
            if dbfs(pcm) > SILENCE_DBFS:
                start = None
            elif start is None:
                start = ts
            elif ts - start >= hold_s:
                return start
        return None

    def offset_at(self, t: float) -> float:
        """Seconds into the recording at arrival time t."""
        n = sum(c.size for ts, c in self.chunks if ts < t)
        return n / RATE

    def audio(self) -> np.ndarray:
        return np.concatenate([c for _, c in self.chunks]) if self.chunks else np.zeros(0, np.int16)


def write_wav(path: str | pathlib.Path, pcm: np.ndarray, rate: int = RATE) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


async def call(
    wav: str,
    url: str = "http://127.0.0.1:8080",
    out: str | None = None,
    timeout: float = 60.0,
    ice_hosts: tuple[str, ...] = ("127.0.0.1",),
    barge_in: str | None = None,
    barge_in_after_ms: int = 1000,
    turns: int = 1,
) -> dict:
    configure_ice_hosts(ice_hosts)
    pcm = load_wav_48k(wav)
    bounds = speech_bounds(pcm)
    if bounds is None:
        raise SystemExit(f"{wav}: no speech found")
    mic = FileMicrophone(pcm)
    pc = RTCPeerConnection()
    pc.addTrack(mic)
    channel = pc.createDataChannel("events")
    events: list[dict] = []
    got_event = asyncio.Event()
    recorder = Recorder()
    tasks: list[asyncio.Task] = []

    @channel.on("message")
    def on_message(msg: str) -> None:
        ev = json.loads(msg)
        ev["t"] = time.monotonic()
        events.append(ev)
        got_event.set()

    @pc.on("track")
    def on_track(track) -> None:
        if track.kind == "audio":
            tasks.append(asyncio.ensure_future(recorder.run(track)))

    await pc.setLocalDescription(await pc.createOffer())
    result: dict = {}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/sessions", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}) as r:
            body = await r.text()
            if r.status != 201:
                await pc.close()
                raise SystemExit(f"edge refused the session: {r.status} {body}")
            location = r.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        session_id = location.rsplit("/", 1)[-1]
        deadline = time.monotonic() + timeout
        bargein_at: float | None = None
        bargein_onset: float | None = None

        def replies_done() -> int:
            return sum(1 for e in events if e["type"] == "reply_done" or e["type"] == "interrupted")

        while time.monotonic() < deadline:
            if mic.t0 is not None and barge_in and bargein_at is None:
                first_audio = recorder.first_audible_after(mic.t0 + bounds[1])
                if first_audio is not None:
                    bpcm = load_wav_48k(barge_in)
                    bb = speech_bounds(bpcm) or (0.0, 0.0)
                    bargein_at = mic.schedule(bpcm, first_audio + barge_in_after_ms / 1000)
                    bargein_onset = bargein_at + bb[0]
                    turns += 1
            done_needed = turns
            if mic.t0 is not None and mic.played_s > bounds[1] and replies_done() >= done_needed:
                break
            got_event.clear()
            try:
                await asyncio.wait_for(got_event.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        await asyncio.sleep(0.3)  # the last frames in flight
        history = None
        async with http.get(f"{url}{location}/history") as r:
            if r.status == 200:
                history = (await r.json())["history"]
        async with http.delete(f"{url}{location}") as r:
            await r.read()
    await pc.close()
    for t in tasks:
        t.cancel()

    speech_end = (mic.t0 or 0) + bounds[1]
    first = recorder.first_audible_after(speech_end)
    reply = recorder.audio()
    out_path = out or tempfile.mktemp(prefix="voxmesh-reply-", suffix=".wav")
    write_wav(out_path, reply)
    result = {
        "session_id": session_id,
        "user_transcript": " ".join(e["text"] for e in events if e["type"] == "user_turn"),
        "agent_text": " ".join(e["text"] for e in events if e["type"] == "agent_say"),
        "ttfa_ms": round((first - speech_end) * 1000) if first is not None else None,
        "reply_wav": str(out_path),
        "server_ttfa_ms": [e["ttfa_ms"] for e in events if e["type"] == "latency"],
        "completed": time.monotonic() < deadline,
        "history": history,
        "turns": [
            {"user": e["text"], "turn_id": e["turn_id"]} for e in events if e["type"] == "user_turn"
        ],
    }
    if barge_in:
        stop = recorder.silent_from(bargein_onset) if bargein_onset else None
        result["bargein_stop_ms"] = round((stop - bargein_onset) * 1000) if stop and bargein_onset else None
        # Where in reply_wav the interrupted agent audio ends (what the caller heard of it).
        result["agent_audio_until_s"] = recorder.offset_at(stop) if stop else None
        result["interrupted"] = [e["turn_id"] for e in events if e["type"] == "interrupted"]
    return result
