"""One caller's session at the edge: the PeerConnection, the audio in both
directions, and the three gRPC streams (stt, orchestrator, tts per reply).

The caller is heard from the first frame: inbound audio goes into a queue the
moment the track arrives, before the stt stream is even open, and nothing is
dropped while it opens. The audio of the unfinished user turn is kept, so a
broken stt stream is reopened and replayed without losing words.

A broken orchestrator stream is reopened (any replica takes the session over
from Redis) and sent what the new replica may not have: the speech events of
every user turn not yet confirmed by a UserTurn, and the latest playback report
of each clause. A Say for a clause this edge already has is ignored, so a
replica that re-sends a reply it cannot know was received is harmless.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from voxmesh.core.aio import cancel_all, spawn
from voxmesh.core.logging import session_id_var
from voxmesh.core.metrics import metric
from voxmesh.v1 import orchestrator_pb2 as opb
from voxmesh.v1 import stt_pb2, tts_pb2
from voxmesh_edge.audio import STT_RATE, WEBRTC_RATE, Resampler, frame_to_mono
from voxmesh_edge import resume
from voxmesh_edge.echo import EchoGuard
from voxmesh_edge.media import PacedOpusTrack, accelerate, request_opus_fmtp, request_ptime
from voxmesh_edge.onset import OnsetDetector, OnsetOptions
from voxmesh_edge.playout import Playout, PlayoutTrack, Segment
from voxmesh_edge.settings import EdgeSettings
from voxmesh_edge.sttmux import SttStream
from voxmesh_edge.upstreams import Upstreams

log = logging.getLogger(__name__)

# Audio kept before a turn opens, for replay: it covers the time stt takes to
# report the onset (VAD window, min speech, stream lag under load). Audio up to
# the end of a committed turn is never kept, so a replay cannot make it a turn again.
PREROLL_MS = 1500
MAX_TURN_AUDIO_S = 60     # never keep more than this for replay


class SessionError(Exception):
    """Bad input from the client; the message is safe to return."""


@dataclass
class ReplyAudio:
    """The tts stream of one agent reply and what is known of its clauses."""

    turn_id: str
    requests: asyncio.Queue = field(default_factory=asyncio.Queue)
    clauses: dict[int, str] = field(default_factory=dict)
    played: set[int] = field(default_factory=set)
    end_of_reply: bool = False
    done_sent: bool = False
    task: asyncio.Task | None = None
    call: object = None
    last_report: dict[int, tuple[int, float]] = field(default_factory=dict)
    # The latest playback per clause, (heard_chars, played_ms, clause_done),
    # re-sent to a new orchestrator stream (see playback()). Updated on every
    # frame played, so kept as a tuple, not a message.
    reports: dict[int, tuple[int, int, bool]] = field(default_factory=dict)
    # Synthesized ahead of the turn commit: audio is held here, unplayed,
    # until the orchestrator commits (or discards) the reply.
    provisional: bool = False
    held: list = field(default_factory=list)

    def all_played(self) -> bool:
        return self.end_of_reply and all(c in self.played for c in self.clauses)

    def playback(self, clause_id: int) -> opb.EdgeEvent:
        heard, played_ms, done = self.reports[clause_id]
        return opb.EdgeEvent(playback=opb.Playback(
            turn_id=self.turn_id, clause_id=clause_id, heard_chars=heard, played_ms=played_ms, clause_done=done))


class EdgeSession:
    def __init__(self, session_id: str, settings: EdgeSettings, upstreams: Upstreams, agent: str = "", resumed: bool = False) -> None:
        self.id = session_id
        # True when this PeerConnection continues an existing conversation
        # (a client reconnecting after its edge was lost or drained).
        self.resumed = resumed
        self.settings = settings
        self.up = upstreams
        self.agent = agent or settings.agent
        self.created = time.time()
        self.closed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.pc = RTCPeerConnection(_rtc_configuration(settings))
        self.playout = Playout(self._on_progress, self._on_first_audio, settings.fade_ms)
        self.playout.on_stopped = self._on_playout_stopped
        self.echo = EchoGuard()
        self.playout.on_output = self.echo.played
        self._echo_utterances: set[int] = set()
        # Barge-in onset at the edge (voxmesh_edge.onset), fed while agent audio
        # is going out; a pause it makes waits for stt's SpeechStarted (timer).
        self.onset = OnsetDetector(self.echo, OnsetOptions(min_active_ms=settings.local_onset_min_ms,
                                                           threshold_dbfs=settings.local_onset_dbfs)) \
            if settings.local_onset else None
        if self.onset is not None:
            # an onset is acted on only then (_on_local_onset): spare the echo check otherwise
            self.onset.wanted = lambda: self._local_pause is None and self._turn_open is None and self._reply_active()
        self._onset_fed = False       # the detector saw the previous inbound frame
        self._onset_in_read = True    # no fast receiver tap: feed it from _read_track
        self._local_pause: asyncio.TimerHandle | None = None
        # The fast media path (voxmesh_edge.media): inline Opus, one shared clock.
        self.track = (PacedOpusTrack(self.playout, settings.opus_bitrate, settings.opus_complexity, settings.opus_application,
                                     settings.playout_ptime_ms, settings.playout_dtx, settings.playout_dtx_interval_ms)
                      if settings.fast_media else PlayoutTrack(self.playout))
        # The fast track sleeps through an idle session's DTX gaps: it hands
        # the echo guard the skipped silence in one call, and brings it up to
        # date before the guard's history is read between its wake-ups.
        self.playout.on_silence = self.echo.silence
        if isinstance(self.track, PacedOpusTrack):
            self.echo.sync = self.track.catch_up
        # The caller's 16 kHz audio for stt, from the very first frame: queued
        # until the stt stream is open (and while it reopens), then written to
        # it directly.
        self.inbound: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._stt_sink: SttStream | None = None
        self._stt_defaults = False  # stt refused the agent's turn settings
        self.to_orchestrator: asyncio.Queue[opb.EdgeEvent] = asyncio.Queue()
        self.replies: dict[str, ReplyAudio] = {}
        self._channel = None
        self._channel_backlog: list[str] = []
        # Audio clock: samples received at 16 kHz, and the wall time of the latest frame.
        self._samples_in = 0
        self._last_frame_wall = time.monotonic()
        self._turn_audio = bytearray()      # audio since the open turn started (or a pre-roll)
        self._turn_audio_start = 0          # its offset in samples
        self._turn_open: int | None = None  # edge utterance id of the open user turn
        self._utt_seq = int(time.time() * 1000)
        self._last_speech_end: float | None = None
        self._bargein_t0: float | None = None
        self._ttfa_pending: float | None = None
        self._hold: dict | None = None  # playout held while the user speaks over an idle edge
        # The agent's turn settings and voice, from the orchestrator's first command.
        self.session_config: opb.SessionConfig | None = None
        self._configured = asyncio.Event()
        self.stats = collections.Counter()
        # Speech events of user turns the orchestrator has not confirmed (no
        # UserTurn yet), by edge utterance id: re-sent on a new Converse stream.
        self._unacked: dict[int, list[opb.EdgeEvent]] = {}
        # Replies interrupted or finished and forgotten: a Say for them is stale.
        self._ended_turns: collections.deque[str] = collections.deque(maxlen=64)
        # The reply turn id of a committed user turn whose first Say has not come yet.
        self._awaiting_reply: str | None = None
        # Utterances with words in a Final (only those can be committed).
        self._worded: set[int] = set()
        # component -> when its stream broke (monotonic), until it works again.
        self._lost_at: dict[str, float] = {}

    # ---- signaling -----------------------------------------------------

    async def accept(self, offer_sdp: str) -> str:
        """Apply the client's offer; return our answer (ICE candidates included)."""
        session_id_var.set(self.id)
        if "m=audio" not in offer_sdp:
            raise SessionError("the offer has no audio m-line")

        @self.pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                spawn(self._read_track(track), self._tasks, "inbound-audio")

        @self.pc.on("datachannel")
        def on_datachannel(channel) -> None:
            self._channel = channel
            channel.on("open", self._drain_backlog)
            if channel.readyState == "open":
                self._drain_backlog()

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                log.info("peer connection %s", self.pc.connectionState)
                await self.close()

        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError and friends on bad SDP
            raise SessionError(f"cannot parse the SDP offer: {exc}") from None
        audio = [t for t in self.pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise SessionError("the offer has no audio m-line")
        audio[0].sender.replaceTrack(self.track)
        did = {"receiver": False}
        if self.settings.fast_media:
            st = self.settings
            did = accelerate(audio[0], self.track, st.reorder_frames, st.inbound_chunk_ms,
                             tap=self._listen_for_bargein if self.onset is not None else None,
                             live_dtx=(st.inbound_dtx_fine_ms / 1000, st.inbound_dtx_chunk_ms / 1000)
                             if st.inbound_dtx else None, voiced_chunk_ms=st.inbound_voiced_chunk_ms,
                             settled=lambda: self._turn_open is None, sink=self._inbound_audio)
            # The fast receiver hands every packet to the detector as it is
            # decoded, before the 40 ms chunking.
            self._onset_in_read = not did["receiver"]
        audio[0].direction = "sendrecv"
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        spawn(self._stt_loop(), self._tasks, "stt")
        spawn(self._orchestrator_loop(), self._tasks, "orchestrator")
        # The token lets the client reattach to this conversation on any edge if
        # this PeerConnection fails or this edge drains (voxmesh_edge.resume).
        self.send_client({"type": "session", "session_id": self.id, "resume_token": self.resume_token(), "resumed": self.resumed})
        sdp = self.pc.localDescription.sdp
        if self.settings.fast_media:
            sdp = request_ptime(sdp, self.settings.inbound_ptime_ms)
        fmtp = {}
        if did["receiver"] and self.settings.inbound_dtx:
            fmtp["usedtx"] = 1  # only where the receiver fills DTX gaps
        if self.settings.inbound_max_playback_rate:
            fmtp["maxplaybackrate"] = self.settings.inbound_max_playback_rate
        if fmtp:
            sdp = request_opus_fmtp(sdp, **fmtp)
        return sdp

    def resume_token(self) -> str:
        return resume.issue(self.settings.token_secret, self.id, self.settings.token_ttl_s)

    def idle(self) -> bool:
        """Between turns: the user is not speaking and no reply is playing or
        coming (a drain moves the client now rather than mid-sentence)."""
        return not self.user_mid_turn() and self._awaiting_reply is None and not self._reply_active()

    def user_mid_turn(self) -> bool:
        """The user is speaking, or their last turn is not yet confirmed by the
        orchestrator: moving the client now would lose words."""
        return self._turn_open is not None or bool(self._unacked)

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._cancel_local_pause()
        self._inbound_ended()
        for reply in self.replies.values():
            _cancel_call(reply.call)
        await cancel_all(self._tasks)
        await cancel_all([r.task for r in self.replies.values() if r.task])
        self.track.stop()
        await self.pc.close()
        log.info("session closed")

    # ---- to the client (data channel) ------------------------------------

    def send_client(self, msg: dict) -> None:
        text = json.dumps(msg)
        ch = self._channel
        if ch is not None and ch.readyState == "open":
            try:
                ch.send(text)
            except Exception:  # a closing channel: the session is ending anyway
                pass
        elif len(self._channel_backlog) < 200:
            self._channel_backlog.append(text)

    def _drain_backlog(self) -> None:
        backlog, self._channel_backlog = self._channel_backlog, []
        for text in backlog:
            self._channel.send(text)

    # ---- inbound audio ----------------------------------------------------

    def _wall_at(self, offset_ms: int) -> float:
        """Monotonic wall time at which audio offset `offset_ms` arrived (audio
        arrives in real time, so it is the latest frame's time minus the gap)."""
        now_ms = self._samples_in * 1000 / STT_RATE
        return self._last_frame_wall - (now_ms - offset_ms) / 1000

    async def _read_track(self, track) -> None:
        """The caller's audio from its track (stock receive path); on the fast
        path the receiver hands it to _inbound_audio itself and the track only
        says when it ends."""
        resample = Resampler(WEBRTC_RATE, STT_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            if frame.sample_rate != resample.in_rate:
                resample = Resampler(frame.sample_rate, STT_RATE)
            pcm = resample(frame_to_mono(frame))
            if pcm.size:
                self._inbound_audio(pcm)
        self._inbound_ended()

    def _inbound_audio(self, pcm: np.ndarray) -> None:
        """16 kHz mono from the caller: to stt (its stream, or the queue until it is open), and kept for a replay."""
        if self._onset_in_read and self.onset is not None:
            self._listen_for_bargein(pcm)
        data = pcm.tobytes()
        self._samples_in += pcm.size
        self._last_frame_wall = time.monotonic()
        self._keep_for_replay(data)
        if self._stt_sink is not None:
            self._stt_sink.write(data)
        else:
            self.inbound.put_nowait(data)

    def _inbound_ended(self) -> None:
        """No more audio from the caller: stt flushes the open turn."""
        if self._stt_sink is not None:
            self._stt_sink.done_writing()
            self._stt_sink = None
        else:
            self.inbound.put_nowait(None)

    def _keep_for_replay(self, data: bytes) -> None:
        self._turn_audio += data
        if self._turn_open is None:
            keep = PREROLL_MS * STT_RATE // 1000 * 2
        else:
            keep = MAX_TURN_AUDIO_S * STT_RATE * 2
        if len(self._turn_audio) > keep:
            drop = len(self._turn_audio) - keep
            drop -= drop % 2
            del self._turn_audio[:drop]
            self._turn_audio_start += drop // 2

    def _forget_audio_before(self, offset_ms: int) -> None:
        """The turn that ended at `offset_ms` is committed: its audio is never replayed."""
        drop = (offset_ms * STT_RATE // 1000 - self._turn_audio_start) * 2
        drop = min(max(0, drop), len(self._turn_audio))
        if drop:
            del self._turn_audio[:drop]
            self._turn_audio_start += drop // 2

    def _lost(self, component: str) -> None:
        self._lost_at.setdefault(component, time.monotonic())

    def _recovered(self, component: str) -> None:
        """The session works again after `component` was lost: count it where it completes."""
        t0 = self._lost_at.pop(component, None)
        if t0 is None:
            return
        seconds = time.monotonic() - t0
        metric("voxmesh_session_recoveries_total").labels(component=component).inc()
        metric("voxmesh_recovery_seconds").labels(component=component).observe(seconds)
        log.info("recovered", extra={"component": component, "ms": round(seconds * 1000)})
        self.send_client({"type": "recovered", "component": component, "ms": round(seconds * 1000)})

    # ---- stt ----------------------------------------------------------------

    async def _stt_loop(self) -> None:
        # The turn settings come with the orchestrator's first command; the
        # caller's audio queues meanwhile (nothing is lost). Without an answer
        # in time, the stt defaults apply.
        try:
            await asyncio.wait_for(self._configured.wait(), self.settings.config_wait_s)
        except asyncio.TimeoutError:
            log.warning("no session config from the orchestrator; stt defaults apply")
        attempt = 0
        while not self.closed.is_set():
            try:
                await self._stt_stream(reconnect=attempt > 0)
                return  # inbound ended: the session is over
            except grpc.aio.AioRpcError as exc:
                if self.closed.is_set():
                    return
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and not self._stt_defaults and self._stt_turn() is not None:
                    # stt refused the agent's turn settings: no retry can change
                    # that, and the caller must still be heard. stt's defaults
                    # from now on; the kept audio is replayed as after a break.
                    log.error("stt refused the agent's turn settings; using stt's defaults", extra={"details": exc.details()})
                    self._stt_defaults = True
                    attempt = max(attempt, 1)
                    continue
                attempt += 1
                self._lost("stt")
                log.warning("stt stream broke; replaying the unfinished turn", extra={"code": exc.code().name, "attempt": attempt})
                # The first retry goes at once (round_robin already skips the
                # broken replica); later ones back off with jitter.
                if attempt > 1:
                    await asyncio.sleep(min(2.0, 0.05 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))

    async def _stt_stream(self, reconnect: bool) -> None:
        replay, replay_start = b"", 0
        if reconnect:
            # Everything queued is also in the kept turn audio: take the kept
            # audio instead, in one step (no await), so nothing is lost or doubled.
            replay, replay_start = bytes(self._turn_audio), self._turn_audio_start
            while not self.inbound.empty():
                if self.inbound.get_nowait() is None:
                    self.inbound.put_nowait(None)
                    break
        utt_map: dict[int, int] = {}
        config = stt_pb2.TranscribeConfig(
            session_id=self.id, sample_rate=STT_RATE, language="en",
            stream_offset_ms=replay_start * 1000 // STT_RATE, interim_results=True,
        )
        turn = self._stt_turn()
        if turn is not None:
            config.turn.CopyFrom(turn)
        # A stream on one of the process's shared stt calls (sttmux): what is
        # queued goes first, then the caller's audio is written as it comes
        # (_inbound_audio), in the same step, so nothing is lost or reordered.
        stream = self.up.stt.open(config)
        try:
            if replay:
                stream.write(replay)
            while not self.inbound.empty():
                data = self.inbound.get_nowait()
                if data is None:
                    stream.done_writing()
                    break
                stream.write(data)
            else:
                self._stt_sink = stream
            async for ev in stream:
                self._recovered("stt")
                await self._on_stt_event(ev, utt_map)
        finally:
            self._stt_sink = None
            stream.cancel()

    def _stt_turn(self) -> stt_pb2.TurnSettings | None:
        """The agent's turn settings for stt, unless stt refused them."""
        if self.session_config is None or self._stt_defaults or not self.session_config.HasField("turn"):
            return None
        return self.session_config.turn

    def _edge_utterance(self, stt_id: int, utt_map: dict[int, int]) -> int:
        """stt numbers turns per stream; the edge numbers them per session, so a
        replayed stream continues the same turn."""
        if stt_id not in utt_map:
            if self._turn_open is not None and self._turn_open not in utt_map.values():
                utt_map[stt_id] = self._turn_open
            else:
                self._utt_seq += 1
                utt_map[stt_id] = self._utt_seq
        return utt_map[stt_id]

    async def _on_stt_event(self, ev: stt_pb2.TranscribeEvent, utt_map: dict[int, int]) -> None:
        kind = ev.WhichOneof("event")
        inner = getattr(ev, kind)
        inner.utterance_id = self._edge_utterance(inner.utterance_id, utt_map)
        utt = inner.utterance_id
        if kind == "speech_started" and self._is_echo_onset(inner.audio_offset_ms):
            if self._cancel_local_pause():
                # The edge's onset was this echo after all (stt's check sees
                # up to 0.5 s of it, the edge's 0.1 s): play on.
                self._bargein_t0 = None
                self.playout.resume()
            self._echo_utterances.add(utt)
            metric("voxmesh_interruptions_total").labels(kind="echo").inc()
            self.send_client({"type": "echo_ignored"})
            return
        if utt in self._echo_utterances:
            if kind == "final" and not self._echo_text(inner.text):
                # The user really spoke (double talk): let the turn through.
                self._echo_utterances.discard(utt)
            elif kind == "end_of_turn":
                self._echo_utterances.discard(utt)
                self._turn_open = None
                return
            else:
                return
        if kind == "speech_started":
            self._turn_open = utt
            self._on_speech_started(inner.audio_offset_ms)
            self.send_client({"type": "speech_started"})
        elif kind == "speech_stopped":
            self._last_speech_end = self._wall_at(inner.audio_offset_ms)
            self.send_client({"type": "speech_stopped"})
        elif kind == "interim":
            self.send_client({"type": "interim", "text": inner.text, "stable": inner.stable_prefix})
        elif kind == "final":
            self.send_client({"type": "final", "text": inner.text})
        elif kind == "end_of_turn":
            self._turn_open = None
            self._forget_audio_before(inner.audio_offset_ms)
            self._end_hold()
            self._ttfa_pending = self._last_speech_end
        event = opb.EdgeEvent(speech=ev)
        self._keep_unacked(utt, event)
        if kind == "final" and inner.text.strip():
            self._worded.add(utt)
        if kind == "end_of_turn":
            if utt not in self._worded:
                self._unacked.pop(utt, None)  # no words: nothing to commit, nothing to replay
            self._worded.discard(utt)
        await self.to_orchestrator.put(event)

    def _keep_unacked(self, utt: int, event: opb.EdgeEvent) -> None:
        events = self._unacked.setdefault(utt, [])
        if len(events) < 200:
            events.append(event)
        # Bounded: a turn stt ended with no words is never confirmed.
        while len(self._unacked) > 3:
            del self._unacked[next(iter(self._unacked))]

    def _is_echo_onset(self, onset_ms: int) -> bool:
        """An onset while agent audio is going out that correlates with it."""
        if not self._reply_active() or not self.echo.recently_audible():
            return False
        # At most the last 0.5 s since the onset: slice before copying (the
        # kept turn audio can be a minute long).
        start = 2 * max(0, onset_ms * STT_RATE // 1000 - self._turn_audio_start)
        start = max(start, len(self._turn_audio) - STT_RATE)  # 0.5 s of int16
        return self.echo.is_echo(np.frombuffer(bytes(self._turn_audio[start:]), dtype="<i2"))

    def _echo_text(self, text: str) -> bool:
        """Second check on the words: an echo's transcript is the agent's own."""
        said = [w.strip(".,!?").lower() for w in text.split() if w.strip(".,!?")]
        if not said:
            return True
        agent = {w.strip(".,!?").lower() for r in self.replies.values() for c in r.clauses.values() for w in c.split()}
        return sum(w in agent for w in said) / len(said) >= 0.7

    def _reply_active(self) -> bool:
        return self.playout.active_turn is not None or any(
            not r.all_played() and not r.provisional for r in self.replies.values()
        )

    def _on_speech_started(self, onset_ms: int) -> None:
        """Barge-in, first step: stop agent audio now, without a round trip.

        With no reply under way, hold the playout anyway: a reply the
        orchestrator is still generating must not start playing over the user.
        The orchestrator decides (Interrupt or Resume) for a reply it had when
        the user started; the hold on an idle edge ends with the user's turn."""
        if not self._reply_active():
            self._hold = {"turns": set()}
            self.playout.pause()
            return
        self._hold = None
        if self._cancel_local_pause():
            # The edge paused already at its own onset (_on_local_onset): that
            # is the pause the orchestrator now decides on.
            paused = True
        else:
            self._bargein_t0 = self._wall_at(onset_ms)
            paused = self.playout.pause()
        turn = self.playout.active_turn or next((t for t, r in self.replies.items() if not r.all_played()), "")
        self.to_orchestrator.put_nowait(opb.EdgeEvent(paused=opb.PlayoutPaused(turn_id=turn, audio_offset_ms=onset_ms)))
        if not paused:
            self._bargein_t0 = None

    def _listen_for_bargein(self, pcm: np.ndarray) -> None:
        """Every inbound frame (16 kHz) as it is decoded. Only while agent audio
        is going out does it cost more than this check: idle sessions, and
        sessions already paused, are not analysed (edge capacity)."""
        if not self.playout.is_audible():
            if self._onset_fed:
                self._onset_fed = False
                self.onset.reset()
            return
        self._onset_fed = True
        try:
            onset = self.onset.feed(pcm)
        except Exception:  # never let the detector break the caller's audio path
            log.exception("barge-in onset detector failed; stt's onset only from now on")
            self.onset = None
            self._onset_in_read = False
            return
        if onset is not None:
            self._on_local_onset((self.onset.samples - onset) / STT_RATE)

    def _on_local_onset(self, ago_s: float) -> None:
        """Barge-in as heard by the edge: pause now; stt's SpeechStarted
        (normally 60-150 ms later) makes it a barge-in for the orchestrator,
        and without one the playout resumes after local_onset_confirm_ms."""
        if self._local_pause is not None or self._turn_open is not None or not self._reply_active():
            # With a user turn open, stt's onset came already: the orchestrator
            # has decided on it (this is more of the same turn).
            return
        self._bargein_t0 = time.monotonic() - ago_s
        if not self.playout.pause():
            self._bargein_t0 = None
            return
        self.stats["local_pauses"] += 1
        self._local_pause = asyncio.get_running_loop().call_later(
            self.settings.local_onset_confirm_ms / 1000, self._local_pause_expired)

    def _local_pause_expired(self) -> None:
        """No SpeechStarted for a local pause: a cough or knock stt's VAD did
        not take for speech. Play on from where it stopped."""
        self._local_pause = None
        self._bargein_t0 = None
        metric("voxmesh_interruptions_total").labels(kind="edge_false").inc()
        self.playout.resume()

    def _cancel_local_pause(self) -> bool:
        """The local pause is settled elsewhere (stt, the orchestrator)."""
        if self._local_pause is None:
            return False
        self._local_pause.cancel()
        self._local_pause = None
        return True

    def _end_hold(self) -> None:
        """The user's turn ended while we held an idle playout: if no reply
        arrived meanwhile, there is nothing for the orchestrator to decide."""
        if self._hold is not None and not self._hold["turns"]:
            self.playout.resume()
        self._hold = None

    def _on_playout_stopped(self) -> None:
        if self._bargein_t0 is not None:
            stop_s = time.monotonic() - self._bargein_t0
            metric("voxmesh_bargein_stop_seconds").observe(max(0.0, stop_s))
            self.send_client({"type": "bargein_stop", "ms": round(stop_s * 1000)})
            self._bargein_t0 = None

    # ---- orchestrator ----------------------------------------------------------

    async def _orchestrator_loop(self) -> None:
        attempt = 0
        resumed = self.resumed
        if resumed:
            # A client reattached after losing its edge: recovered once the
            # conversation is live again here.
            self._lost_at["edge"] = time.monotonic()
        while not self.closed.is_set():
            try:
                await self._converse(resumed)
                # The orchestrator never ends a live session's stream by itself;
                # treat it as a break (any replica resumes the session).
                code, details = "OK", "stream ended"
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code().name, exc.details()
                if self.closed.is_set():
                    return
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    log.error("orchestrator refused the session", extra={"details": exc.details()})
                    self.send_client({"type": "error", "message": exc.details()})
                    return
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    # Another stream took the conversation over (the client
                    # reattached elsewhere): this connection is stale.
                    log.warning("session taken over elsewhere; closing here", extra={"details": exc.details()})
                    self.send_client({"type": "error", "message": "this conversation continues on another connection"})
                    spawn(self.close(), set(), "close-superseded")
                    return
            if self.closed.is_set():
                return
            attempt += 1
            resumed = True
            self._lost("orchestrator")
            log.warning("orchestrator stream broke; reconnecting", extra={"code": code, "details": details, "attempt": attempt})
            # The first retry goes at once: round_robin has already dropped the
            # broken replica. A replica that is down for good costs backoff.
            if attempt > 1:
                await asyncio.sleep(min(2.0, 0.05 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))

    def _replay_for_orchestrator(self) -> list[opb.EdgeEvent]:
        """What a new Converse stream must get before new events: the speech
        events of unconfirmed turns (they may have died with the old stream)
        and the latest playback report of every clause. Queued speech events
        are taken out (they are part of the replay), in one step with no await."""
        queued: list[opb.EdgeEvent] = []
        while not self.to_orchestrator.empty():
            ev = self.to_orchestrator.get_nowait()
            if ev.WhichOneof("event") != "speech":
                queued.append(ev)
        replay = [ev for events in self._unacked.values() for ev in events]
        replay += [reply.playback(c) for reply in self.replies.values() for c in reply.reports]
        return replay + queued

    async def _converse(self, resumed: bool) -> None:
        replay = self._replay_for_orchestrator()

        async def events():
            yield opb.EdgeEvent(start=opb.SessionStart(session_id=self.id, agent=self.agent, resumed=resumed))
            for ev in replay:
                yield ev
            while True:
                yield await self.to_orchestrator.get()

        # wait_for_ready: with every replica down, wait for one to come back.
        call = self.up.orchestrator.Converse(events(), wait_for_ready=True)
        try:
            async for cmd in call:
                # The first command comes once the session is loaded.
                self._recovered("orchestrator")
                self._recovered("edge")
                await self._on_command(cmd)
        finally:
            call.cancel()

    async def _on_command(self, cmd: opb.AgentCommand) -> None:
        kind = cmd.WhichOneof("command")
        if kind == "session_config":
            self.session_config = cmd.session_config
            self._configured.set()
        elif kind == "say":
            self._say(cmd.say)
        elif kind == "end_of_reply":
            reply = self.replies.get(cmd.end_of_reply.turn_id)
            if reply is not None and not reply.end_of_reply:
                reply.end_of_reply = True
                reply.requests.put_nowait(None)
                self._maybe_reply_done(reply)
        elif kind == "reply_committed":
            self._commit_provisional(cmd.reply_committed.turn_id)
        elif kind == "reply_discarded":
            self._discard_provisional(cmd.reply_discarded.turn_id)
        elif kind == "interrupt":
            self._hold = None
            self._cancel_local_pause()
            turn = cmd.interrupt.turn_id
            self._ended_turns.append(turn)
            self.playout.flush(turn)
            reply = self.replies.pop(turn, None)
            if reply is not None:
                _cancel_call(reply.call)
                if reply.task:
                    reply.task.cancel()
            self.send_client({"type": "interrupted", "turn_id": turn})
        elif kind == "resume":
            self._hold = None
            self._cancel_local_pause()
            self.playout.resume()
            self.send_client({"type": "resumed", "turn_id": cmd.resume.turn_id})
        elif kind == "user_turn":
            # Confirmed (committed): its events, and older ones, need no replay.
            utt = int(cmd.user_turn.turn_id[1:]) if cmd.user_turn.turn_id[1:].isdigit() else 0
            for u in [u for u in self._unacked if u <= utt]:
                del self._unacked[u]
            self._awaiting_reply = "a" + cmd.user_turn.turn_id[1:]
            self.send_client({"type": "user_turn", "turn_id": cmd.user_turn.turn_id, "text": cmd.user_turn.text})

    # ---- tts and playout ---------------------------------------------------------

    def _say(self, say: opb.Say) -> None:
        reply = self.replies.get(say.turn_id)
        if say.turn_id in self._ended_turns or (reply is not None and say.clause_id in reply.clauses):
            # A replica that took the conversation over re-sends what it cannot
            # know we received: never say a clause twice.
            return
        if say.turn_id == self._awaiting_reply:
            self._awaiting_reply = None
        if reply is None:
            if self._hold is not None and not say.provisional:
                self._hold["turns"].add(say.turn_id)
            reply = self.replies[say.turn_id] = ReplyAudio(say.turn_id, provisional=say.provisional)
            reply.task = spawn(self._synthesize(reply), self._tasks, f"tts-{say.turn_id}")
            # Forget finished replies so a long session does not grow.
            for old in [t for t, r in self.replies.items() if r.done_sent]:
                del self.replies[old]
                self._ended_turns.append(old)
        reply.clauses[say.clause_id] = say.text
        reply.requests.put_nowait(tts_pb2.Clause(clause_id=say.clause_id, text=say.text))
        if not reply.provisional:
            self.send_client({"type": "agent_say", "turn_id": say.turn_id, "clause_id": say.clause_id, "text": say.text})

    def _commit_provisional(self, turn_id: str) -> None:
        reply = self.replies.get(turn_id)
        if reply is None or not reply.provisional:
            return
        reply.provisional = False
        if self._hold is not None:
            self._hold["turns"].add(turn_id)
        for cid in sorted(reply.clauses):
            self.send_client({"type": "agent_say", "turn_id": turn_id, "clause_id": cid, "text": reply.clauses[cid]})
        held, reply.held = reply.held, []
        for seg in held:
            self.playout.enqueue(seg)

    def _discard_provisional(self, turn_id: str) -> None:
        reply = self.replies.get(turn_id)
        if reply is None or not reply.provisional:
            return
        del self.replies[turn_id]
        _cancel_call(reply.call)
        if reply.task:
            reply.task.cancel()

    async def _synthesize(self, reply: ReplyAudio) -> None:
        async def requests():
            voice = self.session_config.voice if self.session_config else ""
            # At WebRTC's rate: tts resamples (once per stream), not this event loop.
            yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesizeConfig(
                session_id=self.id, voice=voice, sample_rate=WEBRTC_RATE))
            while (clause := await reply.requests.get()) is not None:
                yield tts_pb2.SynthesizeRequest(clause=clause)

        resamplers: dict[int, Resampler] = {}
        call = reply.call = self.up.tts.Synthesize(requests())
        try:
            async for chunk in call:
                text = reply.clauses.get(chunk.clause_id, "")
                # A tts that cannot give WebRTC's rate: resampled here, a stream
                # per clause (its last chunk flushes the filter's ~0.1 s).
                rs = resamplers.get(chunk.sample_rate)
                if rs is None:
                    rs = resamplers[chunk.sample_rate] = Resampler(chunk.sample_rate, WEBRTC_RATE)
                pcm = rs(np.frombuffer(chunk.audio, dtype="<i2"), last=chunk.clause_done)
                if chunk.clause_done:
                    resamplers.pop(chunk.sample_rate, None)
                words = [(w.span.start, w.span.end, w.start_ms, w.end_ms) for w in chunk.words]
                if pcm.size == 0 and not chunk.clause_done:
                    continue
                if pcm.size == 0:
                    # An empty clause (or its closing marker): account for it as played.
                    self._on_progress(reply.turn_id, chunk.clause_id, len(text), 0, True)
                    continue
                seg = Segment(reply.turn_id, chunk.clause_id, pcm, (chunk.span.start, chunk.span.end), words, text, chunk.clause_done)
                if reply.provisional:
                    reply.held.append(seg)
                else:
                    self.playout.enqueue(seg)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                metric("voxmesh_errors_total").labels(where="edge_tts").inc()
                log.warning("tts stream failed", extra={"code": exc.code().name, "details": exc.details()})
        finally:
            _cancel_call(call)

    def _on_first_audio(self, turn_id: str) -> None:
        if self._ttfa_pending is not None:
            ttfa = time.monotonic() - self._ttfa_pending
            self._ttfa_pending = None
            metric("voxmesh_ttfa_seconds").observe(ttfa)
            self.send_client({"type": "latency", "turn_id": turn_id, "ttfa_ms": round(ttfa * 1000)})

    def _on_progress(self, turn_id: str, clause_id: int, heard: int, played_ms: int, clause_done: bool) -> None:
        reply = self.replies.get(turn_id)
        if reply is None:
            return
        now = time.monotonic()
        last = reply.last_report.get(clause_id)
        due = last is None or (heard != last[0] and now - last[1] >= self.settings.playback_report_ms / 1000)
        if clause_done:
            reply.played.add(clause_id)
        reply.reports[clause_id] = (heard, played_ms, clause_done)
        if due or clause_done:
            reply.last_report[clause_id] = (heard, now)
            self.to_orchestrator.put_nowait(reply.playback(clause_id))
        if clause_done:
            self._maybe_reply_done(reply)

    def _maybe_reply_done(self, reply: ReplyAudio) -> None:
        if reply.all_played() and not reply.done_sent:
            reply.done_sent = True
            self.send_client({"type": "reply_done", "turn_id": reply.turn_id})


def _cancel_call(call) -> None:
    if call is not None:
        try:
            call.cancel()
        except Exception:
            pass


def _rtc_configuration(settings: EdgeSettings) -> RTCConfiguration:
    servers = []
    if settings.turn_url:
        servers.append(RTCIceServer(urls=settings.turn_url, username=settings.turn_username or None, credential=settings.turn_password or None))
    return RTCConfiguration(iceServers=servers)
