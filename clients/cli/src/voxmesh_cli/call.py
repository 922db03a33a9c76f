"""`voxmesh call FILE.wav`: talk to the agent over real WebRTC, as a browser
would. The file is the microphone, played in real time; the agent's audio is
recorded; transcripts come over the data channel.

ttfa_ms is measured at this client: from the moment the file's last speech
sample was played into the connection to the first non-silent agent audio
received, so it includes the network, jitter buffers and decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import inspect
import json
import pathlib
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
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
        elif wait < -1.0:
            # Nobody took audio for a while (between two PeerConnections after a
            # lost edge): like a live microphone, what was said meanwhile is gone.
            self._n = int((time.monotonic() - self.t0) * RATE / FRAME)
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


class MicTap(MediaStreamTrack):
    """One PeerConnection's view of the shared microphone: aiortc stops a
    sender's track when its PeerConnection closes, and the microphone must
    outlive a lost connection."""

    kind = "audio"

    def __init__(self, mic: FileMicrophone) -> None:
        super().__init__()
        self.mic = mic

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await self.mic.recv()


@dataclass
class Recorder:
    chunks: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival monotonic, 48k mono)

    async def run(self, track) -> None:
        next_pts = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            data = frame.to_ndarray()
            ch = len(frame.layout.channels)
            mono = data.reshape(-1, ch).mean(axis=1).astype(np.int16) if not frame.format.is_planar else data[0].astype(np.int16)
            if frame.sample_rate != RATE:
                mono = soxr.resample(mono, frame.sample_rate, RATE).astype(np.int16)
            # With Opus DTX the edge sends (next to) nothing while the agent is
            # silent, and the RTP timestamps, hence the frames' pts, run on: a
            # jump in pts is silence that a player plays (so would a speaker),
            # not lost audio. Put it back, so the recording keeps the call's
            # time (offset_at, the reply WAV).
            if frame.pts is not None and frame.time_base is not None:
                if next_pts is not None and frame.pts > next_pts:
                    gap = round(float((frame.pts - next_pts) * frame.time_base) * RATE)
                    if 0 < gap <= 60 * RATE:
                        self.chunks.append((now, np.zeros(gap, np.int16)))
                next_pts = frame.pts + round(frame.samples / frame.sample_rate / frame.time_base)
            self.chunks.append((now, mono))

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

    def onsets(self, gap_s: float = 0.3) -> list[float]:
        """Arrival times of agent audio that starts after at least gap_s of silence."""
        out: list[float] = []
        last_loud: float | None = None
        for ts, pcm in self.chunks:
            if dbfs(pcm) > SILENCE_DBFS:
                if last_loud is None or ts - last_loud >= gap_s:
                    out.append(ts)
                last_loud = ts
        return out

    def offset_at(self, t: float) -> float:
        """Seconds into the recording at arrival time t."""
        n = sum(c.size for ts, c in self.chunks if ts < t)
        return n / RATE

    def audio(self) -> np.ndarray:
        return np.concatenate([c for _, c in self.chunks]) if self.chunks else np.zeros(0, np.int16)


def set_receive_prefetch(frames: int) -> None:
    """How many 20 ms frames aiortc's receive jitter buffer holds before it
    plays (aiortc's default is 4: 80 ms, far more than a browser's adaptive
    buffer keeps on a clean local path, ~20-40 ms). Measured latencies at this
    client include the buffer, so the CLI defaults to what a browser does here."""
    import aiortc.rtcrtpreceiver as receiver
    from aiortc.jitterbuffer import JitterBuffer

    class _Buffer(JitterBuffer):
        def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
            super().__init__(capacity, prefetch if is_video else frames, is_video)

    receiver.JitterBuffer = _Buffer


def write_wav(path: str | pathlib.Path, pcm: np.ndarray, rate: int = RATE) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


RESUME_HEADER = "X-Voxmesh-Resume"              # the token, sent back on a reconnect
RESUME_TOKEN_HEADER = "X-Voxmesh-Resume-Token"  # the token, returned by a new session

# Called with every data-channel event (a dict with "type", "t" = arrival
# monotonic time, "conn" = connection number); may return an awaitable, which
# runs as a task (tests time their kills with it).
EventHook = Callable[[dict], Awaitable[None] | None]


class Refused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status} {body}")
        self.status = status


@dataclass
class Connection:
    """One PeerConnection to one edge for the (possibly resumed) session."""

    n: int
    url: str
    pc: RTCPeerConnection
    location: str = ""
    session_id: str = ""
    token: str = ""
    opened: float = 0.0
    ready: bool = False       # the edge's `session` event arrived on it
    moved: str = ""           # why the edge asked us to move ("" = it did not)
    edge: str = ""            # the edge that serves it (X-Voxmesh-Edge; the one we posted to may have forwarded)


async def _connect(http: aiohttp.ClientSession, n: int, url: str, mic: FileMicrophone, recorder: Recorder, events: list[dict],
                   got_event: asyncio.Event, hooks: list, tasks: list[asyncio.Task], token: str = "") -> Connection:
    pc = RTCPeerConnection()
    pc.addTrack(MicTap(mic))
    channel = pc.createDataChannel("events")
    conn = Connection(n, url, pc, opened=time.monotonic())

    @channel.on("message")
    def on_message(msg: str) -> None:
        ev = json.loads(msg)
        ev["t"] = time.monotonic()
        ev["conn"] = n
        ev["edge"] = conn.edge
        if ev.get("type") == "session":
            conn.ready = True
            conn.token = ev.get("resume_token") or conn.token
        elif ev.get("type") == "move":
            conn.moved = ev.get("reason") or "moved"
        events.append(ev)
        got_event.set()
        for hook in hooks:
            res = hook(ev)
            if inspect.isawaitable(res):
                tasks.append(asyncio.ensure_future(res))

    @pc.on("track")
    def on_track(track) -> None:
        if track.kind == "audio":
            tasks.append(asyncio.ensure_future(recorder.run(track)))

    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers[RESUME_HEADER] = token
    try:
        async with http.post(f"{url}/v1/sessions", data=pc.localDescription.sdp, headers=headers) as r:
            body = await r.text()
            if r.status != 201:
                raise Refused(r.status, body)
            conn.location = r.headers["Location"]
            conn.token = r.headers.get(RESUME_TOKEN_HEADER, "") or token
            conn.edge = r.headers.get("X-Voxmesh-Edge", "")
        conn.session_id = conn.location.rsplit("/", 1)[-1]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    except BaseException:
        await pc.close()
        raise
    return conn


async def call(
    wav: str,
    url: str = "http://127.0.0.1:8080",
    out: str | None = None,
    timeout: float = 60.0,
    ice_hosts: tuple[str, ...] = ("127.0.0.1",),
    barge_in: str | None = None,
    barge_in_after_ms: int = 1000,
    turns: int = 1,
    then: Sequence[str] = (),
    gap_s: float = 1.0,
    reconnect: bool = False,
    stall_s: float = 1.5,
    on_event: EventHook | None = None,
    receive_prefetch: int = 1,
) -> dict:
    """Play `wav` (then each of `then`, one per turn, `gap_s` after the previous
    reply finished) to the agent and record what comes back.

    `url` may list several edges, comma separated. With `reconnect`, a lost
    connection (ICE failed, or no agent audio frames for `stall_s`, as the edge
    sends frames continuously) or a `move` from a draining edge is followed by a
    new PeerConnection for the same conversation: POST /v1/sessions with the
    resume token, to the other edges first, retrying until one accepts. The
    microphone goes on in real time meanwhile (what is said while disconnected
    is lost, as with a live microphone); the next turn waits for the new
    connection."""
    configure_ice_hosts(ice_hosts)
    set_receive_prefetch(receive_prefetch)
    urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
    pcm = load_wav_48k(wav)
    bounds = speech_bounds(pcm)
    if bounds is None:
        raise SystemExit(f"{wav}: no speech found")
    later: list[tuple[np.ndarray, tuple[float, float]]] = []
    for path in then:
        p = load_wav_48k(path)
        b = speech_bounds(p)
        if b is None:
            raise SystemExit(f"{path}: no speech found")
        later.append((p, b))
    mic = FileMicrophone(pcm)
    events: list[dict] = []
    got_event = asyncio.Event()
    recorder = Recorder()
    tasks: list[asyncio.Task] = []
    hooks = [on_event] if on_event else []
    reconnects: list[dict] = []
    utterances: list[tuple[float, float]] = []  # (speech start, speech end) monotonic, per utterance played
    async with aiohttp.ClientSession() as http:
        try:
            conn = await _connect(http, 0, urls[0], mic, recorder, events, got_event, hooks, tasks)
        except Refused as exc:
            raise SystemExit(f"edge refused the session: {exc}") from None
        session_id = conn.session_id
        deadline = time.monotonic() + timeout
        bargein_at: float | None = None
        bargein_onset: float | None = None
        next_at: float | None = None

        def replies_done() -> int:
            """Replies over, counted only when every committed user turn has
            one (a pause can split what was said into more turns than files)."""
            done = {e.get("turn_id") for e in events if e["type"] in ("reply_done", "interrupted")}
            asked = {"a" + e["turn_id"][1:] for e in events if e["type"] == "user_turn"}
            # The last thing said must have reached its end of turn (its Final),
            # and its commit a moment to arrive, before the count means anything.
            finals = [e["t"] for e in events if e["type"] == "final"]
            settled = bool(utterances) and bool(finals) and finals[-1] > utterances[-1][1] and time.monotonic() - finals[-1] > 0.5
            return len(done) if settled and asked <= done else 0

        def lost(c: Connection) -> str:
            if c.moved:
                return "move"
            if c.pc.connectionState in ("failed", "closed"):
                return c.pc.connectionState
            last = recorder.chunks[-1][0] if recorder.chunks else c.opened
            if time.monotonic() - max(last, c.opened + 2.0) > stall_s:
                return "stall"
            return ""

        while time.monotonic() < deadline:
            if mic.t0 is not None and not utterances:
                utterances.append((mic.t0 + bounds[0], mic.t0 + bounds[1]))
            why = lost(conn) if reconnect else ""
            if why:
                conn = await _reconnect(http, conn, why, urls, mic, recorder, events, got_event, hooks, tasks, reconnects, deadline)
                if conn is None:
                    break
                continue
            if mic.t0 is not None and barge_in and bargein_at is None:
                first_audio = recorder.first_audible_after(mic.t0 + bounds[1])
                if first_audio is not None:
                    bpcm = load_wav_48k(barge_in)
                    bb = speech_bounds(bpcm) or (0.0, 0.0)
                    bargein_at = mic.schedule(bpcm, first_audio + barge_in_after_ms / 1000)
                    bargein_onset = bargein_at + bb[0]
                    utterances.append((bargein_onset, bargein_at + bb[1]))
                    turns += 1
            spoken_all = mic.t0 is not None and time.monotonic() > utterances[-1][1] if utterances else False
            if later and spoken_all and replies_done() >= turns:
                # The next turn: once the reply is over and the connection is up.
                # (the edge sends a packet at least every 400 ms, DTX included)
                healthy = conn.ready and recorder.chunks and time.monotonic() - recorder.chunks[-1][0] < 1.0
                if next_at is None:
                    next_at = time.monotonic() + gap_s
                if healthy and time.monotonic() >= next_at:
                    p, b = later.pop(0)
                    at = mic.schedule(p, time.monotonic() + 0.1)
                    utterances.append((at + b[0], at + b[1]))
                    turns += 1
                    next_at = None
            if not later and spoken_all and replies_done() >= turns:
                break
            got_event.clear()
            try:
                await asyncio.wait_for(got_event.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        await asyncio.sleep(0.3)  # the last frames in flight
        history = None
        if conn is not None:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(f"{conn.url}{conn.location}/history") as r:
                    if r.status == 200:
                        history = (await r.json())["history"]
                async with http.delete(f"{conn.url}{conn.location}") as r:
                    await r.read()
    if conn is not None:
        await conn.pc.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

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
        "reconnects": reconnects,
        "edge": conn.edge if conn is not None else "",
        "events": events,
        "audio_onsets": recorder.onsets(),
    }
    if barge_in:
        stop = recorder.silent_from(bargein_onset) if bargein_onset else None
        result["bargein_stop_ms"] = round((stop - bargein_onset) * 1000) if stop and bargein_onset else None
        # Where in reply_wav the interrupted agent audio ends (what the caller heard of it).
        result["agent_audio_until_s"] = recorder.offset_at(stop) if stop else None
        result["interrupted"] = [e["turn_id"] for e in events if e["type"] == "interrupted"]
    return result


async def _reconnect(http, conn: Connection, why: str, urls: list[str], mic, recorder, events, got_event, hooks, tasks,
                     reconnects: list[dict], deadline: float) -> Connection | None:
    """A new PeerConnection for the same conversation, on any edge that takes
    it: the others first (this one failed or is draining), each in turn, until
    one accepts or the call's deadline passes. A 403 (foreign or stale token)
    is final: the conversation cannot be resumed."""
    t_lost = time.monotonic()
    token = conn.token
    # Closed first: the microphone must have one consumer at a time.
    await conn.pc.close()
    if not token:
        raise SystemExit("lost the connection and have no resume token")
    order = [u for u in urls if u != conn.url] + [conn.url]
    attempt = 0
    while time.monotonic() < deadline:
        url = order[attempt % len(order)]
        attempt += 1
        try:
            new = await _connect(http, conn.n + 1, url, mic, recorder, events, got_event, hooks, tasks, token=token)
        except Refused as exc:
            if exc.status == 403:
                raise SystemExit(f"cannot resume the conversation: {exc}") from None
            new = None  # draining (503), owner unreachable (502), ...
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            new = None  # that edge is down
        if new is not None:
            reconnects.append({"reason": why, "lost_at": t_lost, "connected_at": time.monotonic(), "url": url,
                               "attempts": attempt, "session_id": new.session_id, "edge": new.edge})
            return new
        if attempt % len(order) == 0:
            await asyncio.sleep(min(1.0, 0.1 * attempt))
    return None
